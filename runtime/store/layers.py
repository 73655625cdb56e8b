"""Unpacked layers: <root>/layers/<diffid-hex>/, each an overlayfs lower directory.

A layer is keyed by its DiffID (the digest of its uncompressed tar), so the
same layer is unpacked once whatever blob (gzip or plain) it came in and
whatever image uses it. It is extracted into a temporary directory beside its
final place and renamed into place only once complete and verified; a
failure removes the temporary directory, so nothing half-unpacked is ever
visible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from pathlib import Path

from runtime.oci import digest_hex
from runtime.store.extract import ExtractError, ExtractLimits, ExtractStats, Readable, extract_layer


class DiffIdMismatch(ExtractError):
    def __init__(self, blob: str, expected: str, actual: str) -> None:
        super().__init__("", f"layer {blob} unpacks to diff id {actual}, but the image "
                         f"config says {expected}")


def remove_tree(path: Path) -> None:
    """rmtree that also gets through read-only directories (when not root)."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if os.geteuid() != 0:
        for dirpath, dirs, _files in os.walk(path):
            for d in dirs:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, stat.S_IRWXU)
    shutil.rmtree(path)


class LayerStore:
    def __init__(self, root: Path, limits: ExtractLimits | None = None) -> None:
        self.dir = root / "layers"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Layers hold setuid binaries owned by root (as images ship them): host
        # users must not reach them (Docker keeps /var/lib/docker/overlay2 0710).
        # overlayfs reads lower layers with the mounter's (root's) credentials.
        os.chmod(self.dir, 0o700)
        self.limits = limits or ExtractLimits()

    def path(self, diff_id: str) -> Path:
        return self.dir / digest_hex(diff_id)

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    def unpack(self, stream: Readable, expected_diff_id: str | None, blob: str = "",
               limits: ExtractLimits | None = None) -> ExtractStats:
        """Extract a layer tar (plain or gzip) and publish it under its DiffID."""
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o755)
        try:
            stats = extract_layer(stream, tmp, limits or self.limits)
            if expected_diff_id is not None and stats.diff_id != expected_diff_id:
                raise DiffIdMismatch(blob or "?", expected_diff_id, stats.diff_id)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, self.path(stats.diff_id))
            except OSError:
                if not self.has(stats.diff_id):
                    raise
                remove_tree(tmp)  # unpacked meanwhile by someone else: identical content
            return stats
        except BaseException:
            remove_tree(tmp)
            raise

    def remove(self, diff_id: str) -> None:
        """Make the layer vanish at once (rename), then delete its files."""
        src = self.path(diff_id)
        trash = self.dir / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(src, trash)
        except FileNotFoundError:
            return
        remove_tree(trash)

    def sweep_temporaries(self) -> None:
        """Leftovers of a crash mid-unpack or mid-remove."""
        for p in self.dir.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                remove_tree(p)

    def disk_usage(self, diff_id: str) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.path(diff_id)):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_size
        return total
