"""The build context: the tar a client sends, `.dockerignore`, COPY sources.

`.dockerignore` follows Docker's rules: one Go `filepath.Match` pattern per
line (plus `**` for any number of directories), paths cleaned and relative
to the context, `!pattern` re-includes, the last matching line wins, and
`#` starts a comment. A pattern that matches a directory excludes its
whole subtree (unless an exception re-includes part of it).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


class ContextError(ValueError):
    pass


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    exclude: bool
    regex: re.Pattern[str]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A Go filepath.Match pattern (with Docker's `**`) as a regex over clean paths."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ContextError(f".dockerignore: syntax error in pattern {pattern!r}")
            body = pattern[i + 1:end]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append(fnmatch.translate(f"[{body}]")[4:-3])
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def parse_dockerignore(text: str) -> tuple[IgnoreRule, ...]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = True
        if line.startswith("!"):
            exclude, line = False, line[1:].strip()
        cleaned = posixpath.normpath(line.strip("/") or ".") if line.strip("/") else "."
        if cleaned == ".":
            continue  # Docker ignores a pattern of "." or "/"
        rules.append(IgnoreRule(cleaned, exclude, glob_regex(cleaned)))
    return tuple(rules)


def ignored(rules: tuple[IgnoreRule, ...], rel: str) -> bool:
    """Is `rel` (clean, relative, '/'-separated) excluded from the context?"""
    rel = posixpath.normpath(rel)
    verdict = False
    parents = [rel[:i] for i, ch in enumerate(rel) if ch == "/"]
    for rule in rules:
        # A rule matching a parent directory covers everything below it.
        if rule.regex.match(rel) or any(rule.regex.match(p) for p in parents):
            verdict = rule.exclude
    return verdict


def always_kept(rel: str, dockerfile: str) -> bool:
    # The Dockerfile and .dockerignore reach the builder even when ignored (Docker).
    return rel in (dockerfile, ".dockerignore")


def _keep_mode(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter (no absolute names, no escaping links, no devices),
    but keeping the file modes COPY must preserve."""
    safe = tarfile.data_filter(member, dest)
    if safe is None:
        return None
    # None = "do not chown" to tarfile (the `data` filter's own choice); typeshed says int.
    changes: dict[str, Any] = {"uid": None, "gid": None, "uname": None, "gname": None}
    if member.isfile() or member.isdir():
        changes["mode"] = member.mode & 0o7777
    return safe.replace(**changes, deep=False)


def extract_context(stream: BinaryIO, dest: Path, dockerfile: str = "Dockerfile",
                    ignore: bool = True) -> int:
    """Unpack a context tar (plain or compressed, as the docker CLI may send) into
    `dest`, dropping what .dockerignore excludes (unless `ignore` is False: the
    caller applies it later). Returns the number of entries."""
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            n = 0
            for m in tar:
                tar.extract(m, dest, filter=_keep_mode)
                n += 1
    except (tarfile.TarError, EOFError) as e:
        raise ContextError(f"the build context is not a valid tar: {e}") from None
    if ignore:
        apply_dockerignore(dest, dockerfile)
    return n


def apply_dockerignore(root: Path, dockerfile: str = "Dockerfile") -> None:
    """Delete what `root/.dockerignore` excludes (the daemon side of the rules)."""
    try:
        rules = parse_dockerignore((root / ".dockerignore").read_text())
    except FileNotFoundError:
        return
    if not rules:
        return
    entries = list(walk(root))
    for rel, is_dir in entries:
        if not is_dir and ignored(rules, rel) and not always_kept(rel, dockerfile):
            (root / rel).unlink()
    # Directories last, deepest first: one still holding a re-included (!) file stays.
    for rel, is_dir in reversed(entries):
        if is_dir and ignored(rules, rel):
            path = root / rel
            if path.is_symlink():
                path.unlink()
            else:
                with contextlib.suppress(OSError):
                    path.rmdir()


def walk(root: Path, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """(relative path, is_dir) of everything under root, parents before children."""
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        base = os.path.relpath(dirpath, root)
        for name in sorted(dirs):
            rel = name if base == "." else f"{base}/{name}"
            yield (f"{prefix}/{rel}" if prefix else rel), True
        for name in sorted(files):
            rel = name if base == "." else f"{base}/{name}"
            yield (f"{prefix}/{rel}" if prefix else rel), False


def context_tar(root: Path, out: BinaryIO, dockerfile: str = "Dockerfile",
                dockerfile_data: bytes | None = None) -> int:
    """The tar the CLI sends: the context minus .dockerignore (client side)."""
    try:
        rules = parse_dockerignore((root / ".dockerignore").read_text())
    except FileNotFoundError:
        rules = ()
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, _ in walk(root):
            if ignored(rules, rel) and not always_kept(rel, dockerfile):
                continue
            if dockerfile_data is not None and rel == dockerfile:
                continue
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            count += 1
        if dockerfile_data is not None:
            info = tarfile.TarInfo(dockerfile)
            info.size, info.mode = len(dockerfile_data), 0o644
            import io

            tar.addfile(info, io.BytesIO(dockerfile_data))
    return count


def hash_tree(paths: list[tuple[str, Path]]) -> str:
    """The content a COPY/ADD reads, for its cache key: names, types, modes,
    link targets and file bytes (not times: a fresh checkout hits the cache)."""
    h = hashlib.sha256()
    for name, path in paths:
        for rel, full in _entries(name, path):
            st = os.lstat(full)
            h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            h.update(b"\n")
    return "sha256:" + h.hexdigest()


def _entries(name: str, path: Path) -> Iterator[tuple[str, Path]]:
    yield name, path
    if path.is_dir() and not path.is_symlink():
        for rel, _ in walk(path):
            yield f"{name}/{rel}", path / rel
