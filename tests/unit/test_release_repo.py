"""`hostos release` and the TUF repository, checked with python-tuf's own client.

Each test publishes into a temporary repository and reads it back through
hostos.update.check.Source (python-tuf's ngclient Updater over file://),
so what is asserted is what a host would accept or refuse.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from hostos.errors import HostosError
from hostos.keys import KeyStore, KeyStoreError
from hostos.release import extract_usr, make_release
from hostos.repo import KeyLayout, Repository, RepositoryError
from hostos.update.check import CheckError, Source, Verdict, decide
from hostos.update.config import validate
from hostos.update.manifest import ArtifactKind
from hostos.update.version import Version
from runtime.run import run
from tests.unit.update_helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
    snapshot_tree,
)


def client(tmp: Path, repo: Repository, name: str = "host") -> Source:
    settings = validate({
        "url": f"file://{repo.path}",
        "state_dir": str(tmp / name),
        "trusted_root": str(repo.path / "metadata" / "1.root.json"),
    })
    return Source(settings)


def test_keys_are_encrypted_at_rest_and_need_the_passphrase(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", PASSPHRASE)
    keyid = store.generate().public_key.keyid
    pem = (tmp_path / "keys" / f"{keyid}.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert (tmp_path / "keys" / f"{keyid}.pem").stat().st_mode & 0o077 == 0
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore(tmp_path / "keys", b"not the passphrase").signer(keyid)
    with pytest.raises(KeyStoreError, match="shorter"):
        KeyStore(tmp_path / "keys", b"short")


def test_release_publishes_usr_verity_and_uki_that_a_tuf_client_verifies(tmp_path: Path) -> None:
    image = make_image(tmp_path / "image-b", "0.2.0")
    repo = make_repo(tmp_path)
    manifest = make_release(image.folder, "0.2.0", repo)

    src = client(tmp_path, repo)
    release = src.refresh()
    assert release is not None
    assert release.version == Version.parse("0.2.0")
    assert release.usrhash == image.usrhash
    assert release.rollout == {"waves": []}
    assert release == manifest
    files = src.fetch(release)
    expected = {ArtifactKind.USR: image.usr, ArtifactKind.VERITY: image.verity,
                ArtifactKind.UKI: image.uki}
    for kind, data in expected.items():
        out = tmp_path / f"{kind}.out"
        run(["zstd", "-q", "-d", "-f", "-o", str(out), str(files[kind])])
        assert out.read_bytes() == data
        art = release.artifacts[kind]
        assert (art.size, art.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    # The compressed download is what the repository lists, hash-prefixed.
    targets = repo.targets()
    usr_target = targets[release.artifacts[ArtifactKind.USR].target]
    digest = usr_target.hashes["sha256"]
    assert (repo.path / "targets" / "0.2.0" / f"{digest}.usr.zst").is_file()


def test_extract_refuses_an_image_whose_partitions_do_not_match_its_usrhash(
        tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", "0.2.0")
    data = json.loads((image.folder / "berth.json").read_text())
    data["usrhash"] = "ab" * 32
    (image.folder / "berth.json").write_text(json.dumps(data))
    from hostos.artifacts import load_image
    with pytest.raises(HostosError, match="no usr partition with UUID"):
        extract_usr(load_image(image.folder), tmp_path)


def test_release_of_a_version_other_than_the_image_changes_nothing(tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", "0.2.0")
    repo = make_repo(tmp_path)
    before = snapshot_tree(repo.path)
    with pytest.raises(HostosError, match=r"is version 0\.2\.0, not 0\.3\.0"):
        make_release(image.folder, "0.3.0", repo)
    assert snapshot_tree(repo.path) == before


def test_signing_below_threshold_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    layout = KeyLayout.default().with_overrides({"targets": (2, 2)})
    repo = make_repo(tmp_path, layout)
    image = make_image(tmp_path / "img", "0.2.0")
    # Lose one of the two targets keys.
    store = repo.store
    store.remove(repo.root_md.signed.roles["targets"].keyids[0])
    before = snapshot_tree(repo.path)
    with pytest.raises(RepositoryError, match="targets needs 2 signature"):
        make_release(image.folder, "0.2.0", Repository.open(repo.path, store))
    assert snapshot_tree(repo.path) == before


def test_client_refuses_targets_metadata_signed_below_threshold(tmp_path: Path) -> None:
    layout = KeyLayout.default().with_overrides({"targets": (2, 2)})
    repo = make_repo(tmp_path, layout)
    make_release(make_image(tmp_path / "a", "0.2.0").folder, "0.2.0", repo)
    # A compromised single targets key publishes 0.3.0: forge the metadata by
    # signing with just that key (snapshot and timestamp keys are honest).
    forged = Repository.open(repo.path, repo.store)
    keyids = forged.root_md.signed.roles["targets"].keyids
    forged._sign_top = _sign_with_only(forged, keyids[0])  # type: ignore[method-assign]
    make_release(make_image(tmp_path / "b", "0.3.0").folder, "0.3.0", forged)
    with pytest.raises(CheckError, match="signatures below threshold"):
        client(tmp_path, repo).refresh()


def _sign_with_only(repo: Repository, keyid: str):  # type: ignore[no-untyped-def]
    original = repo._sign_top

    def sign(md, role):  # type: ignore[no-untyped-def]
        if role != "targets":
            return original(md, role)
        md.signatures.clear()
        md.sign(repo.store.signer(keyid), append=True)
        return None

    return sign


def test_expired_timestamp_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    make_release(make_image(tmp_path / "img", "0.2.0").folder, "0.2.0", repo)
    repo.refresh_timestamp(timedelta(hours=-1))
    with pytest.raises(CheckError, match="expired"):
        client(tmp_path, repo).refresh()


def test_tampered_target_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    make_release(make_image(tmp_path / "img", "0.2.0").folder, "0.2.0", repo)
    for f in (repo.path / "targets" / "0.2.0").glob("*.usr.zst"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    src = client(tmp_path, repo)
    release = src.refresh()
    assert release is not None
    with pytest.raises(CheckError, match=r"usr\.zst refused: length/hash mismatch"):
        src.fetch(release)


def test_replayed_old_timestamp_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    make_release(make_image(tmp_path / "a", "0.2.0").folder, "0.2.0", repo)
    old_timestamp = (repo.path / "metadata" / "timestamp.json").read_bytes()
    make_release(make_image(tmp_path / "b", "0.3.0").folder, "0.3.0", repo)
    src = client(tmp_path, repo)
    assert src.refresh() is not None
    (repo.path / "metadata" / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(CheckError, match="metadata version rollback"):
        client(tmp_path, repo).refresh()  # same state dir: it remembers v3


def test_old_version_resigned_as_new_is_refused_as_a_downgrade(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    make_release(make_image(tmp_path / "b", "0.2.0").folder, "0.2.0", repo)
    make_release(make_image(tmp_path / "a", "0.1.0").folder, "0.1.0", repo)
    release = client(tmp_path, repo).refresh()
    assert release is not None and str(release.version) == "0.1.0"
    d = decide(release, Version.parse("0.2.0"), "cd" * 32, ())
    assert d.verdict is Verdict.DOWNGRADE


def test_decide_policy() -> None:
    from hostos.update.manifest import ReleaseManifest
    rel = ReleaseManifest(Version.parse("0.2.0"), "ab" * 32, {})
    v1, v2, v3 = (Version.parse(v) for v in ("0.1.0", "0.2.0", "0.10.0"))
    assert decide(rel, v1, "cd" * 32, ()).verdict is Verdict.UPDATE
    assert decide(rel, v1, "cd" * 32, ("0.2.0",)).verdict is Verdict.KNOWN_BAD
    assert decide(rel, v1, "ab" * 32, ()).verdict is Verdict.UP_TO_DATE
    assert decide(rel, v2, "cd" * 32, ()).verdict is Verdict.UP_TO_DATE
    assert decide(rel, v3, "cd" * 32, ()).verdict is Verdict.DOWNGRADE
    assert decide(None, v1, None, ()).verdict is Verdict.NO_RELEASE


def test_root_rotation_is_followed_by_clients_that_trust_only_the_first_root(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    make_release(make_image(tmp_path / "a", "0.2.0").folder, "0.2.0", repo)
    old_root_keys = set(repo.root_md.signed.roles["root"].keyids)
    repo.rotate("root")
    repo.rotate("targets")
    make_release(make_image(tmp_path / "b", "0.3.0").folder, "0.3.0", repo)
    assert set(repo.root_md.signed.roles["root"].keyids).isdisjoint(old_root_keys)
    src = client(tmp_path, repo)
    release = src.refresh()
    assert release is not None and str(release.version) == "0.3.0"
    trusted = json.loads((tmp_path / "host" / "metadata" / "root.json").read_text())
    assert trusted["signed"]["version"] == 3


def test_rollout_plan_with_fractional_shares_survives_signing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    plan = {"waves": [{"percent": 12.5, "start": "2026-01-01T00:00:00+00:00"},
                      {"percent": 100.0, "start": "2026-01-02T00:00:00+00:00"}]}
    make_release(make_image(tmp_path / "img", "0.2.0").folder, "0.2.0", repo, rollout=plan)
    release = client(tmp_path, repo).refresh()
    assert release is not None
    from hostos.rollout import RolloutPlan
    parsed = RolloutPlan.from_release(release.rollout)
    assert parsed is not None and [w.percent for w in parsed.waves] == [12.5, 100.0]
