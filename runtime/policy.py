"""The trust policy: which images may be pulled and run, by registry/repository.

A policy file (JSON, or TOML when named *.toml), default /etc/berth/policy.json:

    {"default": {"type": "accept"},
     "scopes": {
       "127.0.0.1:5000":            {"type": "reject"},
       "127.0.0.1:5000/team":       {"type": "signedBy", "keys": ["/etc/berth/keys/team.pub"]},
       "docker.io/library/busybox": {"type": "accept"}}}

The most specific scope wins: the full repository name, then each parent
namespace, then the registry, then `default`. `signedBy` requires at least
one cosign signature by one of the keys over the image's digest. No file
means accept everything (as Docker does).

Enforced twice: at pull (`PolicyGate.check_pull`, before any layer is
fetched: signatures are fetched from the registry, verified, and the valid
ones recorded) and at run (`check_run`, which the engine calls before it
creates a container: offline, against the recorded signatures, so an image
that was loaded, retagged, or pulled before the policy changed is judged
too).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from runtime.oci import ResolvedImage
from runtime.registry.client import RegistryClient
from runtime.registry.reference import Reference, parse, try_parse
from runtime.sign import keys
from runtime.sign.cosign import Signature, fetch_signatures, verify_signatures
from runtime.store.db import schema, transaction
from runtime.store.images import ImageRecord, ImageStore

DEFAULT_PATH = Path("/etc/berth/policy.json")

_DDL = """
CREATE TABLE IF NOT EXISTS image_signatures (
  digest TEXT NOT NULL,
  payload BLOB NOT NULL,
  signature TEXT NOT NULL,
  PRIMARY KEY (digest, signature)
);
"""
schema("signatures", _DDL)


class PolicyError(ValueError):
    """The policy file itself is wrong."""


class PolicyDenied(PermissionError):
    """An image the trust policy refuses; the message says which rule and why."""

    http_status = 403  # what the API answers (runtime/api/errors.py reads it)

    def __init__(self, image: str, scope: str, why: str) -> None:
        self.image, self.scope = image, scope
        super().__init__(f"image {image} refused by the trust policy (scope "
                         f"{scope or 'default'!r}): {why}")


class Requirement(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    SIGNED_BY = "signedBy"


@dataclass(frozen=True)
class Rule:
    type: Requirement
    keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    key_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustPolicy:
    default: Rule = field(default_factory=lambda: Rule(Requirement.ACCEPT))
    scopes: Mapping[str, Rule] = field(default_factory=lambda: MappingProxyType({}))

    def rule_for(self, name: str) -> tuple[str, Rule]:
        """(scope, rule) for a repository name like 127.0.0.1:5000/team/app."""
        parts = name.split("/")
        for n in range(len(parts), 0, -1):
            scope = "/".join(parts[:n])
            if scope in self.scopes:
                return scope, self.scopes[scope]
        return "", self.default


def _rule(where: str, doc: Any, base: Path) -> Rule:
    if not isinstance(doc, dict) or "type" not in doc:
        raise PolicyError(f"{where}: want an object with a `type`")
    try:
        kind = Requirement(doc["type"])
    except ValueError:
        raise PolicyError(f"{where}: type {doc['type']!r} is not one of "
                          f"{', '.join(r.value for r in Requirement)}") from None
    if kind is not Requirement.SIGNED_BY:
        return Rule(kind)
    names = doc.get("keys")
    if not isinstance(names, list) or not names or not all(isinstance(k, str) for k in names):
        raise PolicyError(f"{where}: signedBy needs `keys`, a list of public key files or PEMs")
    loaded = []
    for k in names:
        pem = k.encode() if k.lstrip().startswith("-----BEGIN") else _read(base / k, where)
        try:
            loaded.append(keys.load_public_key(pem))
        except keys.KeyFileError as e:
            raise PolicyError(f"{where}: key {k[:40]!r}: {e}") from None
    return Rule(kind, tuple(loaded), tuple(names))


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PolicyError(f"{where}: cannot read key {path}: {e.strerror}") from None


def parse_policy(doc: Any, origin: str = "policy", base: Path = Path("/")) -> TrustPolicy:
    if not isinstance(doc, dict):
        raise PolicyError(f"{origin}: not an object")
    unknown = set(doc) - {"default", "scopes"}
    if unknown:
        raise PolicyError(f"{origin}: unknown keys {sorted(unknown)}")
    default = _rule(f"{origin}: default", doc.get("default", {"type": "accept"}), base)
    scopes: dict[str, Rule] = {}
    for scope, rule in (doc.get("scopes") or {}).items():
        host = scope.split(":", 1)[0]
        if "/" not in scope and ("." in host or host == "localhost"):
            name: str | None = scope  # a whole registry
        else:
            ref = try_parse(scope, default_tag=False)
            name = ref.name if ref is not None and not ref.tag and not ref.digest else None
        if name is None:
            raise PolicyError(f"{origin}: scope {scope!r} is not a registry or repository name")
        scopes[name] = _rule(f"{origin}: scope {scope!r}", rule, base)
    return TrustPolicy(default, MappingProxyType(scopes))


def load_policy(path: Path = DEFAULT_PATH) -> TrustPolicy:
    """The policy at `path`; accept-all if there is no file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return TrustPolicy()
    except OSError as e:
        raise PolicyError(f"{path}: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: {e}") from None
    return parse_policy(doc, str(path), path.parent)


# --- recorded signatures (so `check_run` works offline) ---


def record_signatures(store: ImageStore, digest: str, sigs: Sequence[Signature]) -> None:
    store.ensure_schema(_DDL)
    with store.lock, transaction(store.conn):
        store.conn.executemany("INSERT OR IGNORE INTO image_signatures VALUES (?,?,?)",
                               [(digest, s.payload, s.signature) for s in sigs])


def recorded_signatures(store: ImageStore, digest: str) -> list[Signature]:
    store.ensure_schema(_DDL)
    rows = store.conn.execute("SELECT payload, signature FROM image_signatures WHERE digest=?",
                              (digest,)).fetchall()
    return [Signature(bytes(r[0]), str(r[1])) for r in rows]


# --- enforcement ---


class PolicyGate:
    """The pull-time half (runtime.registry.transfer.TrustGate)."""

    def __init__(self, policy: TrustPolicy, store: ImageStore) -> None:
        self.policy, self.store = policy, store

    async def check_pull(self, client: RegistryClient, ref: Reference,
                         manifest_digest: str) -> None:
        scope, rule = self.policy.rule_for(ref.name)
        if rule.type is Requirement.ACCEPT:
            return
        if rule.type is Requirement.REJECT:
            raise PolicyDenied(ref.familiar, scope, "images from here are rejected")
        sigs = await fetch_signatures(client, ref, manifest_digest, self.store.blobs)
        good = verify_signatures(sigs, manifest_digest, rule.keys)
        if not good:
            raise PolicyDenied(ref.familiar, scope, _unsigned_why(len(sigs), manifest_digest))
        record_signatures(self.store, manifest_digest, [v.signature for v in good])


def _unsigned_why(found: int, digest: str) -> str:
    if not found:
        return f"{digest} is not signed; a signature by a trusted key is required"
    return (f"none of the {found} signature(s) on {digest} is by a trusted key "
            f"(or they sign another digest)")


def check_run(policy: TrustPolicy, store: ImageStore, ref: str,
              rec: ImageRecord | None = None) -> None:
    """The run-time half: raise PolicyDenied unless the policy lets `ref` run (`rec`:
    its record, when the caller has looked it up already).

    By name, that name's rule applies; by id, the rule of every name the image
    has (the default if it has none) must pass.
    """
    if rec is None:
        rec = store.get(ref)
    r = try_parse(ref)
    if r is not None and (r.digest or r.tagged in rec.tags):
        names = [(r.name, r.familiar)]
    else:
        repos = sorted({parse(t).name for t in rec.tags} |
                       {d.split("@", 1)[0] for d in rec.repo_digests})
        names = [(n, n) for n in repos] or [("", rec.id)]
    digests = {rec.manifest_digest} | {d.split("@", 1)[1] for d in rec.repo_digests}
    for name, shown in names:
        scope, rule = policy.rule_for(name) if name else ("", policy.default)
        if rule.type is Requirement.REJECT:
            raise PolicyDenied(shown, scope, "images from here are rejected")
        if rule.type is Requirement.SIGNED_BY:
            ok = any(verify_signatures(recorded_signatures(store, d), d, rule.keys)
                     for d in digests)
            if not ok:
                found = sum(len(recorded_signatures(store, d)) for d in digests)
                raise PolicyDenied(shown, scope, _unsigned_why(found, rec.manifest_digest))


class TrustedResolver:
    """The engine's ImageResolver with the policy in front: hand this to
    ContainerManager as `images=` and no container is created from an image
    the policy refuses (PolicyDenied), without the engine knowing about trust.
    The policy file is re-read at every call, so edits apply at once."""

    def __init__(self, store: ImageStore, policy_path: Path = DEFAULT_PATH) -> None:
        self.store, self.policy_path = store, policy_path

    def resolve(self, ref: str) -> ResolvedImage:
        rec = self.store.get(ref)   # looked up once, for the policy and the engine
        check_run(load_policy(self.policy_path), self.store, ref, rec)
        return self.store.resolve(ref, rec)
