"""The trust policy: parsing, scope precedence, run-time enforcement."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from runtime.policy import (
    PolicyDenied,
    PolicyError,
    Requirement,
    TrustPolicy,
    check_run,
    load_policy,
    parse_policy,
    record_signatures,
)
from runtime.registry.reference import parse
from runtime.sign import keys
from runtime.sign.cosign import make_signature
from runtime.store.archive import import_rootfs
from runtime.store.images import ImageStore


@pytest.fixture(scope="module")
def pair() -> keys.KeyPair:
    return keys.generate_key_pair(b"pw")


def write_policy(tmp_path: Path, pair: keys.KeyPair) -> Path:
    (tmp_path / "team.pub").write_bytes(pair.public_pem)
    p = tmp_path / "policy.json"
    p.write_text(json.dumps({
        "default": {"type": "reject"},
        "scopes": {
            "reg.example:5000": {"type": "accept"},
            "reg.example:5000/team": {"type": "signedBy", "keys": ["team.pub"]},
            "busybox": {"type": "accept"},
        }}))
    return p


def test_most_specific_scope_wins(tmp_path: Path, pair: keys.KeyPair) -> None:
    pol = load_policy(write_policy(tmp_path, pair))
    assert pol.rule_for("reg.example:5000/team/app")[1].type is Requirement.SIGNED_BY
    assert pol.rule_for("reg.example:5000/other")[1].type is Requirement.ACCEPT
    assert pol.rule_for("docker.io/library/busybox") == ("docker.io/library/busybox",
                                                          pol.scopes["docker.io/library/busybox"])
    assert pol.rule_for("quay.io/x/y") == ("", pol.default)
    assert load_policy(tmp_path / "absent.json") == TrustPolicy()


def test_toml_policy(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text('[default]\ntype = "accept"\n[scopes."reg.example"]\ntype = "reject"\n')
    assert load_policy(p).rule_for("reg.example/a")[1].type is Requirement.REJECT


@pytest.mark.parametrize(("doc", "message"), [
    ({"default": {"type": "maybe"}}, "is not one of"),
    ({"default": {"type": "signedBy"}}, "needs `keys`"),
    ({"default": {"type": "signedBy", "keys": ["missing.pub"]}}, "cannot read key"),
    ({"scopes": {"app:1": {"type": "accept"}}}, "not a registry or repository"),
    ({"defaults": {}}, "unknown keys"),
])
def test_bad_policies_are_refused(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(doc, "p.json", tmp_path)


def image(store: ImageStore, tag: str) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("x")
        t.addfile(ti, io.BytesIO(b""))
    buf.seek(0)
    return import_rootfs(store, buf, tag=tag).id


def test_check_run(tmp_path: Path, pair: keys.KeyPair) -> None:
    pol = load_policy(write_policy(tmp_path, pair))
    store = ImageStore(tmp_path / "root")
    image(store, "reg.example:5000/other/app:1")
    check_run(pol, store, "reg.example:5000/other/app:1")
    iid = image(store, "reg.example:5000/team/app:1")
    with pytest.raises(PolicyDenied, match=r"team/app:1 refused .*'reg.example:5000/team'.* "
                       "is not signed"):
        check_run(pol, store, "reg.example:5000/team/app:1")
    with pytest.raises(PolicyDenied):
        check_run(pol, store, iid)  # by id: every name's rule applies
    key = keys.decrypt_private_key(pair.private_pem, b"pw")
    digest = store.get(iid).manifest_digest
    wrong = make_signature(key, parse("reg.example:5000/team/app"), "sha256:" + "0" * 64)
    record_signatures(store, digest, [wrong])
    with pytest.raises(PolicyDenied, match="none of the 1 signature"):
        check_run(pol, store, iid)
    record_signatures(store, digest, [make_signature(key, parse("reg.example:5000/team/app"),
                                                     digest)])
    check_run(pol, store, "reg.example:5000/team/app:1")
    check_run(pol, store, iid)
    untagged = image(store, "quay.io/x/y:1")
    with pytest.raises(PolicyDenied, match="rejected"):
        check_run(pol, store, untagged)
