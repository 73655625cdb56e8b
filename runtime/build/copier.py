"""COPY and ADD: find the sources, lay them out in a staging tree, ready to commit.

Sources come from the build context (a directory) or, with `--from`, from
another stage's or image's layers (a `LayerView`). The staging tree mirrors
the image's root: parent directories keep the metadata they have in the
image, copied files keep their mode and mtime and are owned by root or by
`--chown`. `commit_layer` then turns the staging tree into the layer.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from runtime.build.context import glob_regex, walk
from runtime.build.view import LayerView
from runtime.container.user import UserError, resolve

GLOB_CHARS = "*?["


class CopyError(ValueError):
    pass


@dataclass(frozen=True)
class Source:
    name: str      # as the Dockerfile names it (after expansion), for messages and hashing
    path: Path     # where it is on the host
    inline: bytes | None = None  # a heredoc's content (COPY <<EOF /dest)


def _clean_rel(src: str) -> str:
    rel = posixpath.normpath("/" + src).lstrip("/")
    return rel or "."


def context_sources(root: Path, patterns: list[str], what: str) -> list[Source]:
    out: list[Source] = []
    for pat in patterns:
        if "://" in pat:
            raise CopyError(f"{what} {pat}: remote URLs cannot be fetched: this builder has "
                            f"no network; download the file into the build context instead")
        rel = _clean_rel(pat)
        if any(c in rel for c in GLOB_CHARS):
            regex = glob_regex(rel)
            found = [r for r, _ in walk(root) if regex.match(r)]
            if not found:
                raise CopyError(f"{what} failed: no source files were specified matching "
                                f"{pat!r} in the build context")
            out += [Source(r, root / r) for r in found]
            continue
        path = root / rel if rel != "." else root
        if not path.parent.resolve().is_relative_to(root.resolve()):
            raise CopyError(f"{what} failed: {pat}: a symlink leads outside the build context")
        if not (path.exists() or path.is_symlink()):
            raise CopyError(f"{what} failed: file not found in build context or excluded by "
                            f".dockerignore: stat {pat}: file does not exist")
        out.append(Source(rel, path))
    return out


def view_sources(view: LayerView, patterns: list[str], what: str, origin: str) -> list[Source]:
    out: list[Source] = []
    for pat in patterns:
        path = "/" + _clean_rel(pat)
        head, tail = posixpath.split(path)
        if any(c in tail for c in GLOB_CHARS):
            found = view.resolve(head)
            names = [n for n in view.listdir(found[0])] if found else []
            matched = [n for n in names if fnmatch.fnmatchcase(n, tail)]
            if not matched or found is None:
                raise CopyError(f"{what} failed: no source files in {origin} matching {pat!r}")
            for n in matched:
                hit = view.resolve(posixpath.join(found[0], n), follow_last=False)
                if hit is not None:
                    out.append(Source(hit[0], hit[1]))
            continue
        hit = view.resolve(path)
        if hit is None:
            raise CopyError(f"{what} failed: {pat}: no such file or directory in {origin}")
        out.append(Source(hit[0], hit[1]))
    return out


@dataclass(frozen=True)
class Owner:
    uid: int = 0
    gid: int = 0


def parse_chown(spec: str | None, view: LayerView) -> Owner:
    if not spec:
        return Owner()

    def read(path: str) -> str:
        found = view.resolve(path)
        try:
            return found[1].read_text() if found else ""
        except OSError:
            return ""
    user, _, group = spec.partition(":")
    if user.isdigit() and (not group or group.isdigit()):
        return Owner(int(user), int(group or user))
    try:
        who = resolve(spec, read("/etc/passwd"), read("/etc/group"))
    except UserError as e:
        raise CopyError(f"--chown={spec}: {e}") from None
    return Owner(who.uid, who.gid)


def parse_chmod(spec: str | None) -> int | None:
    if not spec:
        return None
    try:
        mode = int(spec, 8)
    except ValueError:
        raise CopyError(f"--chmod={spec}: use an octal mode such as 0755") from None
    if mode > 0o7777:
        raise CopyError(f"--chmod={spec}: mode out of range")
    return mode


class Stager:
    """Lays sources out under `staging` as they must appear in the image."""

    def __init__(self, staging: Path, image: LayerView, owner: Owner,
                 chmod: int | None) -> None:
        self.staging, self.image, self.owner, self.chmod = staging, image, owner, chmod

    def host(self, path: str) -> Path:
        return self.staging / path.lstrip("/")

    def ensure_dir(self, path: str, owned: bool) -> None:
        """Make `path` and its parents in staging, with the image's metadata if it has them."""
        parts = [p for p in path.split("/") if p]
        cur = ""
        for i, p in enumerate(parts):
            cur = f"{cur}/{p}"
            target = self.host(cur)
            if target.is_dir():
                continue
            st = self.image.stat(cur)
            target.mkdir()
            if st is not None and stat.S_ISDIR(st.st_mode):
                os.chmod(target, stat.S_IMODE(st.st_mode))
                os.lchown(target, st.st_uid, st.st_gid)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            else:
                os.chmod(target, 0o755)
                last = i == len(parts) - 1
                uid, gid = (self.owner.uid, self.owner.gid) if owned and last else (0, 0)
                os.lchown(target, uid, gid)

    def dest_is_dir(self, dest: str, sources: list[Source]) -> bool:
        if dest.endswith("/") or len(sources) > 1:
            return True
        st = self.image.stat(dest)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def resolve_dest(self, dest: str) -> str:
        """`dest` with the image's symlinks followed (inside the image), so that COPY into
        /bin on a merged-/usr image writes /usr/bin and keeps the /bin symlink."""
        dest = posixpath.normpath("/" + dest)
        if dest == "/":
            return dest
        found = self.image.resolve(dest)
        if found is not None:
            return found[0]
        head, tail = posixpath.split(dest)
        return posixpath.join(self.resolve_dest(head), tail)

    def copy(self, sources: list[Source], dest: str, extract_tars: bool) -> None:
        into_dir = self.dest_is_dir(dest, sources) or any(
            s.inline is None and s.path.is_dir() and not s.path.is_symlink() for s in sources)
        if into_dir or self.image.resolve(dest, follow_last=False) is None:
            dest = self.resolve_dest(dest)
        else:  # an existing file or symlink is replaced, not written through
            head, tail = posixpath.split(posixpath.normpath("/" + dest))
            dest = posixpath.join(self.resolve_dest(head), tail)
        if into_dir:
            self.ensure_dir(dest, owned=True)
        else:
            self.ensure_dir(posixpath.dirname(dest), owned=False)
        for s in sources:
            if s.inline is not None:
                target = posixpath.join(dest, s.name) if into_dir else dest
                self._write(self.host(target), s.inline)
            elif s.path.is_dir() and not s.path.is_symlink():
                self._tree(s.path, dest)
            elif extract_tars and _is_archive(s.path):
                self._untar(s.path, dest)
            else:
                target = posixpath.join(dest, posixpath.basename(s.name)) if into_dir else dest
                self._entry(s.path, self.host(target))

    def _write(self, target: Path, data: bytes) -> None:
        target.write_bytes(data)
        os.chmod(target, self.chmod if self.chmod is not None else 0o644)
        os.lchown(target, self.owner.uid, self.owner.gid)

    def _entry(self, src: Path, target: Path) -> None:
        st = os.lstat(src)
        if target.is_dir() and not target.is_symlink() and not stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)
        elif (target.exists() or target.is_symlink()) and not target.is_dir():
            target.unlink()
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISDIR(st.st_mode):
            target.mkdir(exist_ok=True)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(src, target, follow_symlinks=False)
        else:
            return  # sockets, fifos, devices are not copied
        os.lchown(target, self.owner.uid, self.owner.gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(target, self.chmod if self.chmod is not None else stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _tree(self, src: Path, dest: str) -> None:
        dirs: list[tuple[Path, Path]] = []
        for rel, is_dir in walk(src):
            target = self.host(posixpath.join(dest, rel))
            self._entry(src / rel, target)
            if is_dir and not (src / rel).is_symlink():
                dirs.append((src / rel, target))
        for s, t in reversed(dirs):  # times of directories last: writing inside moved them
            st = os.lstat(s)
            os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _untar(self, archive: Path, dest: str) -> None:
        root = self.host(dest)
        root.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive, "r:*") as tar:
                # ADD keeps the archive's owners, as Docker does; `data` refuses
                # absolute names, escaping links and devices.
                tar.extractall(root, filter=_fully_trusted_owner_data, numeric_owner=True)
        except tarfile.TarError as e:
            raise CopyError(f"ADD {archive.name}: cannot extract: {e}") from None


def _fully_trusted_owner_data(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    safe = tarfile.data_filter(member, dest)
    if safe is None:
        return None
    if member.isfile() or member.isdir():
        return safe.replace(mode=member.mode & 0o7777, uid=member.uid, gid=member.gid,
                            deep=False)
    return safe.replace(uid=member.uid, gid=member.gid, deep=False)


def _is_archive(path: Path) -> bool:
    """Docker's ADD extracts local tar archives (plain, gzip, bzip2, xz)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
