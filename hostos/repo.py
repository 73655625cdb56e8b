"""A TUF repository as plain files, written with python-tuf's Metadata API.

Layout (any static HTTP server can serve it):

    REPO/metadata/1.root.json ... N.root.json, root.json (= newest root)
    REPO/metadata/V.targets.json, V.snapshot.json, timestamp.json
    REPO/targets/<dir>/<sha256>.<name>

Consistent snapshots are on: every metadata version and every target file
has its own name, so a client that is mid-refresh while a release is being
published still sees one coherent state. Publishing writes target files
first, then targets, snapshot and finally timestamp.json (atomic rename):
the timestamp is the commit point.

Each role's metadata is signed by every key of that role the key store
holds; the result is checked against the role's threshold *before* it is
written, so a store missing keys changes nothing on disk.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    TOP_LEVEL_ROLE_NAMES,
    Key,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import SerializationError
from tuf.api.serialization.json import JSONSerializer

from hostos.errors import HostosError
from hostos.keys import KeyStore, write_private

ROLES = ("root", "targets", "snapshot", "timestamp")
HASH = "sha256"


class RepositoryError(HostosError):
    pass


@dataclass(frozen=True)
class KeyLayout:
    """How many keys each role has and how many signatures it needs."""

    roles: Mapping[str, tuple[int, int]]

    @classmethod
    def default(cls) -> KeyLayout:
        return cls({r: (1, 1) for r in ROLES})

    def with_overrides(self, overrides: Mapping[str, tuple[int, int]]) -> KeyLayout:
        unknown = set(overrides) - set(ROLES)
        if unknown:
            raise RepositoryError(
                f"unknown role(s) {sorted(unknown)}: roles are {', '.join(ROLES)}"
            )
        return KeyLayout({**self.roles, **overrides})


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed."""

    lifetimes: Mapping[str, timedelta] = field(default_factory=lambda: {
        "root": timedelta(days=365),
        "targets": timedelta(days=90),
        "snapshot": timedelta(days=30),
        "timestamp": timedelta(days=7),
    })

    def expires(self, role: str, now: datetime | None = None) -> datetime:
        start = now or datetime.now(UTC)
        return (start + self.lifetimes[role]).replace(microsecond=0)


@dataclass(frozen=True)
class TargetSpec:
    """One file to publish: its target name, where it is, and custom metadata."""

    name: str
    source: Path
    custom: Mapping[str, Any]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _file_hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


class Repository:
    """The repository's current metadata, loaded from disk; changes are written whole."""

    def __init__(self, path: Path, store: KeyStore, expiry: Expiry | None = None) -> None:
        self.path = path
        self.store = store
        self.expiry = expiry or Expiry()
        self.meta_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.root_md: Metadata[Root] = Metadata(Root())
        self.targets_md: Metadata[Targets] = Metadata(Targets())
        self.snapshot_md: Metadata[Snapshot] = Metadata(Snapshot())
        self.timestamp_md: Metadata[Timestamp] = Metadata(Timestamp())

    # ---- loading -------------------------------------------------------

    @classmethod
    def open(cls, path: Path, store: KeyStore, expiry: Expiry | None = None) -> Repository:
        r = cls(path, store, expiry)
        try:
            root_versions = sorted(
                int(p.name.split(".", 1)[0]) for p in r.meta_dir.glob("*.root.json")
            )
            if not root_versions:
                raise FileNotFoundError(r.meta_dir / "1.root.json")
            r.root_md = Metadata[Root].from_file(str(r.meta_dir / f"{root_versions[-1]}.root.json"))
            r.timestamp_md = Metadata[Timestamp].from_file(str(r.meta_dir / "timestamp.json"))
            sv = r.timestamp_md.signed.snapshot_meta.version
            r.snapshot_md = Metadata[Snapshot].from_file(str(r.meta_dir / f"{sv}.snapshot.json"))
            tv = r.snapshot_md.signed.meta["targets.json"].version
            r.targets_md = Metadata[Targets].from_file(str(r.meta_dir / f"{tv}.targets.json"))
        except FileNotFoundError as e:
            raise RepositoryError(
                f"{path} is not a Berth update repository (missing {e.filename}): "
                "run `hostos keys init` first"
            ) from None
        return r

    @classmethod
    def create(cls, path: Path, store: KeyStore, layout: KeyLayout,
               expiry: Expiry | None = None) -> Repository:
        if (path / "metadata").exists():
            raise RepositoryError(f"{path} already holds a repository; refusing to overwrite it")
        r = cls(path, store, expiry)
        root = Root(expires=r.expiry.expires("root"), consistent_snapshot=True)
        root.roles = {}
        for role in ROLES:
            count, threshold = layout.roles[role]
            root.roles[role] = Role([], threshold)
            for _ in range(count):
                root.add_key(store.generate().public_key, role)
        r.root_md = Metadata(root)
        r.targets_md = Metadata(Targets(expires=r.expiry.expires("targets")))
        r.snapshot_md = Metadata(Snapshot(expires=r.expiry.expires("snapshot")))
        r.timestamp_md = Metadata(Timestamp(expires=r.expiry.expires("timestamp")))
        r._sign_root(r.root_md, previous=None)
        r._sign_top(r.targets_md, "targets")
        r._sign_top(r.snapshot_md, "snapshot")
        r._sign_top(r.timestamp_md, "timestamp")
        r.meta_dir.mkdir(parents=True)
        r.targets_dir.mkdir(parents=True, exist_ok=True)
        r._write_root()
        r._write_versioned(r.targets_md, "targets")
        r._write_versioned(r.snapshot_md, "snapshot")
        r._write_timestamp()
        return r

    @property
    def root_version(self) -> int:
        return self.root_md.signed.version

    def targets(self) -> dict[str, TargetFile]:
        return dict(self.targets_md.signed.targets)

    # ---- signing -------------------------------------------------------

    def _sign_with(self, md: Metadata[Any], keyids: Sequence[str]) -> None:
        md.signatures.clear()
        for signer in self.store.signers(keyids):
            try:
                md.sign(signer, append=True)
            except SerializationError as e:
                raise RepositoryError(
                    f"{md.signed.type} metadata cannot be signed: {e.__cause__ or e} "
                    "(canonical JSON has no floats)"
                ) from e

    def _sign_top(self, md: Metadata[Any], role: str) -> None:
        root = self.root_md.signed
        self._sign_with(md, root.roles[role].keyids)
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            have = len(md.signatures)
            need = root.roles[role].threshold
            raise RepositoryError(
                f"{role} needs {need} signature(s) but {self.store.path} holds {have} of its keys: "
                "add the missing keys to the key store"
            ) from None

    def _sign_root(self, md: Metadata[Root], previous: Root | None) -> None:
        """Sign a root with its own keys and, on rotation, the previous root's too."""
        keyids = list(md.signed.roles["root"].keyids)
        if previous is not None:
            keyids += [k for k in previous.roles["root"].keyids if k not in keyids]
        self._sign_with(md, keyids)
        try:
            md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
            if previous is not None:
                previous.verify_delegate("root", md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            raise RepositoryError(
                f"root v{md.signed.version} lacks a threshold of signatures from the "
                f"{'old and new' if previous else ''} root keys in {self.store.path}"
            ) from None

    # ---- writing -------------------------------------------------------

    def _bytes(self, md: Metadata[Any]) -> bytes:
        return md.to_bytes(JSONSerializer(compact=False))

    def _write_root(self) -> None:
        data = self._bytes(self.root_md)
        write_private(self.meta_dir / f"{self.root_version}.root.json", data, 0o644)
        write_private(self.meta_dir / "root.json", data, 0o644)

    def _write_versioned(self, md: Metadata[Any], role: str) -> None:
        write_private(self.meta_dir / f"{md.signed.version}.{role}.json", self._bytes(md), 0o644)

    def _write_timestamp(self) -> None:
        write_private(self.meta_dir / "timestamp.json", self._bytes(self.timestamp_md), 0o644)

    def _publish(self, targets: Metadata[Targets] | None) -> None:
        """Sign new snapshot (and targets) plus timestamp, then write them in order."""
        if targets is not None:
            self._sign_top(targets, "targets")
        snapshot = Metadata(replace_signed(self.snapshot_md.signed))
        snapshot.signed.version += 1
        snapshot.signed.expires = self.expiry.expires("snapshot")
        tv = (targets or self.targets_md).signed.version
        snapshot.signed.meta["targets.json"] = MetaFile(version=tv)
        self._sign_top(snapshot, "snapshot")
        timestamp = self._next_timestamp(snapshot.signed.version, self.expiry.expires("timestamp"))
        # All signed: now write, timestamp last (the commit point).
        if targets is not None:
            self._write_versioned(targets, "targets")
            self.targets_md = targets
        self._write_versioned(snapshot, "snapshot")
        self.snapshot_md = snapshot
        self.timestamp_md = timestamp
        self._write_timestamp()

    def _next_timestamp(self, snapshot_version: int, expires: datetime) -> Metadata[Timestamp]:
        ts = Metadata(replace_signed(self.timestamp_md.signed))
        ts.signed.version += 1
        ts.signed.expires = expires
        ts.signed.snapshot_meta = MetaFile(version=snapshot_version)
        self._sign_top(ts, "timestamp")
        return ts

    # ---- operations ----------------------------------------------------

    def add_targets(self, specs: Sequence[TargetSpec]) -> list[TargetFile]:
        """Publish files as targets (replacing same-named ones) in one new snapshot."""
        for spec in specs:
            if not spec.source.is_file():
                raise RepositoryError(f"target {spec.name}: {spec.source} is not a file")
            if spec.name.startswith("/") or ".." in spec.name.split("/"):
                raise RepositoryError(f"target name {spec.name!r} must be a relative path")
        targets = Metadata(replace_signed(self.targets_md.signed))
        targets.signed.version += 1
        targets.signed.expires = self.expiry.expires("targets")
        added: list[TargetFile] = []
        copies: list[tuple[Path, Path]] = []
        for spec in specs:
            length, digest = _file_hash(spec.source)
            tf = TargetFile(length, {HASH: digest}, spec.name, {"custom": dict(spec.custom)})
            targets.signed.targets[spec.name] = tf
            parent, _, base = spec.name.rpartition("/")
            copies.append((spec.source, self.targets_dir / parent / f"{digest}.{base}"))
            added.append(tf)
        self._sign_top(targets, "targets")  # fails before anything is copied
        for src, dst in copies:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
        self._publish(targets)
        return added

    def refresh_timestamp(self, lifetime: timedelta | None = None) -> int:
        """Re-sign the timestamp (as a cron job would); a negative lifetime makes it expired."""
        expires = _now() + lifetime if lifetime is not None else self.expiry.expires("timestamp")
        self.timestamp_md = self._next_timestamp(self.snapshot_md.signed.version, expires)
        self._write_timestamp()
        return self.timestamp_md.signed.version

    def rotate(self, role: str, count: int | None = None, threshold: int | None = None) -> None:
        """Replace every key of role with new ones; publish a new root (and role metadata)."""
        if role not in TOP_LEVEL_ROLE_NAMES:
            raise RepositoryError(f"unknown role {role!r}")
        previous = self.root_md.signed
        old_role = previous.roles[role]
        n = count if count is not None else len(old_role.keyids)
        thr = threshold if threshold is not None else min(old_role.threshold, n)
        if not 1 <= thr <= n:
            raise RepositoryError(f"threshold {thr} is not between 1 and {n} keys")
        new_root = copy.deepcopy(previous)
        old_keyids = list(old_role.keyids)
        new_keys: list[Key] = [self.store.generate().public_key for _ in range(n)]
        for keyid in old_keyids:
            new_root.revoke_key(keyid, role)
        for key in new_keys:
            new_root.add_key(key, role)
        new_root.roles[role].threshold = thr
        new_root.version += 1
        new_root.expires = self.expiry.expires("root")
        md = Metadata(new_root)
        self._sign_root(md, previous=previous)
        self.root_md = md
        self._write_root()
        if role != "root":
            # The role's metadata must now carry the new keys' signatures.
            if role == "targets":
                targets = Metadata(replace_signed(self.targets_md.signed))
                targets.signed.version += 1
                self._publish(targets)
            elif role == "snapshot":
                self._publish(None)
            else:
                self.refresh_timestamp()


def replace_signed(signed: Any) -> Any:
    """A deep copy of a Signed object (to_dict/from_dict would share lists)."""
    return copy.deepcopy(signed)


__all__ = ["Expiry", "KeyLayout", "Repository", "RepositoryError", "TargetSpec"]
