"""A read-only merged view of an image's layer directories, without mounting.

COPY --from reads another stage's (or image's) files, and COPY/ADD look at
the destination's parents in the current image. Mounting an overlay for
that would leave mounts to clean up on every failure path; instead paths are
resolved through the layer stack the way overlayfs does: the top layer
wins, a whiteout (0/0 char device) hides what is below, an opaque directory
(`trusted.overlay.opaque=y`) hides the lower directories' entries, and
symlinks are followed inside the image's root, never out of it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

_OPAQUE = "trusted.overlay.opaque"
_MAX_LINKS = 40


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    return False


class LayerView:
    def __init__(self, layer_dirs: Sequence[Path]) -> None:
        self.top_first = list(reversed(layer_dirs))

    def _lookup_exact(self, rel: str) -> Path | None:
        """The topmost real entry for `rel` (no symlink following), or None."""
        parts = [p for p in rel.split("/") if p]
        for layer in self.top_first:
            path = layer.joinpath(*parts) if parts else layer
            try:
                st = os.lstat(path)
            except OSError:
                if self._hidden_below(layer, parts):
                    return None
                continue
            if _is_whiteout(st):
                return None
            return path
        return None

    def _hidden_below(self, layer: Path, parts: list[str]) -> bool:
        # In this layer, a parent of `parts` that is a whiteout, a non-directory or an
        # opaque directory hides whatever the lower layers have under it.
        cur = layer
        for p in parts[:-1]:
            cur = cur / p
            try:
                st = os.lstat(cur)
            except OSError:
                return False
            if _is_whiteout(st) or not stat.S_ISDIR(st.st_mode) or _opaque(cur):
                return True
        return False

    def resolve(self, path: str, follow_last: bool = True) -> tuple[str, Path] | None:
        """(clean in-image path, host path) after following symlinks inside the image."""
        todo = [p for p in path.split("/") if p and p != "."]
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            rel = "/".join([*done, part])
            host = self._lookup_exact(rel)
            if host is None:
                return None
            if host.is_symlink() and (todo or follow_last):
                links += 1
                if links > _MAX_LINKS:
                    return None
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p and p != "."] + todo
                continue
            done.append(part)
        rel = "/".join(done)
        host = self._lookup_exact(rel) if done else (self.top_first[0] if self.top_first
                                                      else None)
        return (("/" + rel), host) if host is not None else None

    def stat(self, path: str) -> os.stat_result | None:
        found = self.resolve(path)
        return os.stat(found[1]) if found else None

    def listdir(self, path: str) -> list[str]:
        """The merged entries of a directory (an in-image, symlink-free path)."""
        parts = [p for p in path.split("/") if p]
        seen: dict[str, bool] = {}
        for layer in self.top_first:
            d = layer.joinpath(*parts) if parts else layer
            try:
                names = os.listdir(d)
            except OSError:
                names = []
            for n in names:
                if n not in seen:
                    seen[n] = not _is_whiteout(os.lstat(d / n))
            if self._hidden_below(layer, [*parts, ""]):
                break  # this layer's dir (or a parent) is opaque, a whiteout or a file
        return sorted(n for n, visible in seen.items() if visible)

    def walk(self, path: str) -> Iterator[tuple[str, Path]]:
        """(path relative to `path`, host path) of everything under a directory."""
        for name in self.listdir(path):
            child = posixpath.join(path, name)
            host = self._lookup_exact(child)
            if host is None:
                continue
            yield name, host
            if host.is_dir() and not host.is_symlink():
                for rel, h in self.walk(child):
                    yield f"{name}/{rel}", h
