"""Signatures with the real cosign (2.x from Debian trixie) and the trust policy
enforced at pull and at run, against a real docker-registry."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostos.mkosi import (
    AptConfig,
    apt_download_cmd,
    candidate_version,
    dpkg_extract_cmd,
    update_lists,
)
from runtime.container.manager import ContainerManager
from runtime.container.spec import CreateRequest
from runtime.events import EventBus
from runtime.oci import ImageNotFound
from runtime.policy import (
    PolicyDenied,
    PolicyGate,
    TrustedResolver,
    check_run,
    load_policy,
    record_signatures,
)
from runtime.registry.client import RegistryClient, RegistryOptions
from runtime.registry.reference import parse
from runtime.registry.transfer import pull, push
from runtime.run import run
from runtime.sign import keys
from runtime.sign.cli import register
from runtime.sign.cosign import SignatureError, make_signature, sign_image, verify_image
from runtime.sign.provenance import BuildProvenance, attest_image, verified_provenance
from runtime.store.archive import import_rootfs
from runtime.store.images import ImageStore
from tests.faultproxy import Registry, busybox_rootfs, start_registry
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import IMAGE, engine_env, leaks, output

CACHE = Path(os.environ.get("BERTH_CACHE", "/var/cache/berth"))


def ensure_cosign() -> Path:
    """cosign's static binary, unpacked once from Debian trixie's .deb into the cache."""
    found = sorted(CACHE.glob("cosign-*/usr/bin/cosign"))
    if found:
        return found[-1]
    apt = AptConfig(CACHE / "apt")
    update_lists(apt)
    version = candidate_version(apt, "cosign")
    run(apt_download_cmd(apt, f"cosign={version}"), cwd=apt.archives_dir)
    deb = next(apt.archives_dir.glob(f"cosign_{version.split(':')[-1]}_amd64.deb"))
    staging = CACHE / f".cosign-{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    run(dpkg_extract_cmd(deb, staging))
    dest = CACHE / f"cosign-{version}"
    staging.replace(dest)
    return dest / "usr/bin/cosign"


@pytest.fixture(scope="module")
def cosign() -> Path:
    return ensure_cosign()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path) as reg:
        yield reg


def opts(reg: Registry) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset({reg.host}), retry_delay=0.01)


def pushed_image(tmp_path: Path, reg: Registry, repo: str) -> str:
    """Push a busybox image to reg/repo:1; returns the reference."""
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(rootfs, arcname=".")
    buf.seek(0)
    store = ImageStore(tmp_path / f"src-{repo.replace('/', '-')}")
    ref = f"{reg.host}/{repo}:1"
    import_rootfs(store, buf, tag=ref, changes=['CMD ["echo", "hi"]'])

    async def go() -> None:
        async with RegistryClient(opts(reg)) as c:
            await push(store, c, ref)
    asyncio.run(go())
    return ref


def cosign_cmd(cosign: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COSIGN_PASSWORD": "pw", "HOME": str(tmp_path),
           "SIGSTORE_NO_CACHE": "1", "TUF_ROOT": str(tmp_path / "tuf")}
    return subprocess.run([str(cosign), *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture
def berth_keys(tmp_path: Path) -> tuple[Path, Path]:
    return keys.write_key_pair(keys.generate_key_pair(b"pw"), tmp_path / "berth")


def berth_sign(reg: Registry, ref: str, key_file: Path, scratch: ImageStore) -> str:
    key = keys.decrypt_private_key(key_file.read_bytes(), b"pw")

    async def go() -> str:
        async with RegistryClient(opts(reg)) as c:
            digest, _ = await sign_image(c, parse(ref), key, scratch.blobs)
            return digest
    return asyncio.run(go())


def berth_verify(reg: Registry, ref: str, pub_file: Path, scratch: ImageStore) -> int:
    pub = keys.load_public_key(pub_file.read_bytes())

    async def go() -> int:
        async with RegistryClient(opts(reg)) as c:
            _, good = await verify_image(c, parse(ref), [pub], scratch.blobs)
            return len(good)
    return asyncio.run(go())


def test_cosign_verifies_berths_signature(tmp_path: Path, registry: Registry, cosign: Path,
                                         berth_keys: tuple[Path, Path]) -> None:
    ref = pushed_image(tmp_path, registry, "signed/app")
    scratch = ImageStore(tmp_path / "scratch")
    digest = berth_sign(registry, ref, berth_keys[0], scratch)
    r = cosign_cmd(cosign, tmp_path, "verify", "--key", str(berth_keys[1]),
                   "--insecure-ignore-tlog", "--allow-insecure-registry", ref)
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)
    assert claims[0]["critical"]["image"]["docker-manifest-digest"] == digest
    # cosign also takes Berth's encrypted private key as its own.
    r = cosign_cmd(cosign, tmp_path, "public-key", "--key", str(berth_keys[0]))
    assert r.returncode == 0 and r.stdout.encode() == berth_keys[1].read_bytes(), r.stderr


def test_berth_verifies_cosigns_signature(tmp_path: Path, registry: Registry,
                                          cosign: Path) -> None:
    ref = pushed_image(tmp_path, registry, "cosigned/app")
    r = cosign_cmd(cosign, tmp_path, "generate-key-pair", "--output-key-prefix",
                   str(tmp_path / "cosign"))
    assert r.returncode == 0, r.stderr
    r = cosign_cmd(cosign, tmp_path, "sign", "--key", str(tmp_path / "cosign.key"),
                   "--tlog-upload=false", "--allow-insecure-registry", "-y", ref)
    assert r.returncode == 0, r.stderr
    scratch = ImageStore(tmp_path / "scratch")
    assert berth_verify(registry, ref, tmp_path / "cosign.pub", scratch) == 1
    # Berth signs with cosign's key too, adding to the same signature image.
    berth_sign(registry, ref, tmp_path / "cosign.key", scratch)
    assert berth_verify(registry, ref, tmp_path / "cosign.pub", scratch) == 2


def test_wrong_key_and_unsigned_are_refused(tmp_path: Path, registry: Registry,
                                           berth_keys: tuple[Path, Path]) -> None:
    ref = pushed_image(tmp_path, registry, "some/app")
    scratch = ImageStore(tmp_path / "scratch")
    with pytest.raises(SignatureError, match="no signatures found"):
        berth_verify(registry, ref, berth_keys[1], scratch)
    other = keys.write_key_pair(keys.generate_key_pair(b"pw"), tmp_path / "other")
    berth_sign(registry, ref, other[0], scratch)
    with pytest.raises(SignatureError, match="none of its 1 signature"):
        berth_verify(registry, ref, berth_keys[1], scratch)


def test_policy_enforced_at_pull_and_at_run(tmp_path: Path, registry: Registry,
                                            berth_keys: tuple[Path, Path]) -> None:
    signed = pushed_image(tmp_path, registry, "team/signed")
    unsigned = pushed_image(tmp_path, registry, "team/unsigned")
    other = pushed_image(tmp_path, registry, "elsewhere/app")
    scratch = ImageStore(tmp_path / "scratch")
    berth_sign(registry, signed, berth_keys[0], scratch)
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({
        "default": {"type": "reject"},
        "scopes": {f"{registry.host}/team": {"type": "signedBy",
                                              "keys": [str(berth_keys[1])]},
                   f"{registry.host}/elsewhere": {"type": "accept"}}}))
    policy = load_policy(policy_file)
    store = ImageStore(tmp_path / "berth")
    gate = PolicyGate(policy, store)

    async def pull_with_policy(ref: str) -> None:
        async with RegistryClient(opts(registry)) as c:
            await pull(store, c, ref, trust=gate)

    asyncio.run(pull_with_policy(signed))
    asyncio.run(pull_with_policy(other))
    with pytest.raises(PolicyDenied, match=r"team/unsigned:1 refused .* is not signed"):
        asyncio.run(pull_with_policy(unsigned))
    assert len(store.list_images()) == 2
    with pytest.raises(ImageNotFound):
        store.resolve(unsigned)
    # at run: the recorded signature lets the signed image run, offline
    check_run(policy, store, signed)
    check_run(policy, store, other)
    # signatures are over the digest (as cosign's): a local retag in scope still runs
    store.tag(signed, f"{registry.host}/team/retagged:1")
    check_run(policy, store, f"{registry.host}/team/retagged:1")
    store.tag(signed, "quay.io/x/y:1")
    with pytest.raises(PolicyDenied, match=r"quay.io/x/y:1 refused .*rejected"):
        check_run(policy, store, "quay.io/x/y:1")
    # pulled before the policy (no gate): refused at run
    async def pull_without_policy(ref: str) -> None:
        async with RegistryClient(opts(registry)) as c:
            await pull(store, c, ref)
    asyncio.run(pull_without_policy(unsigned))
    with pytest.raises(PolicyDenied, match=r"team/unsigned:1 refused .* is not signed"):
        check_run(policy, store, unsigned)


def berth_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="berth")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args, None)
    return status


def test_cli_verbs_generate_sign_verify(tmp_path: Path, registry: Registry, cosign: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ref = pushed_image(tmp_path, registry, "cli/app")
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    prefix = str(tmp_path / "k")
    assert berth_cli("generate-key-pair", "--output-key-prefix", prefix) == 0
    assert berth_cli("verify", "--key", f"{prefix}.pub", "--allow-insecure-registry", ref) == 1
    assert "no signatures found" in capsys.readouterr().err
    assert berth_cli("sign", "--key", f"{prefix}.key", "--allow-insecure-registry", ref) == 0
    assert berth_cli("verify", "--key", f"{prefix}.pub", "--allow-insecure-registry", ref) == 0
    r = cosign_cmd(cosign, tmp_path, "verify", "--key", f"{prefix}.pub",
                   "--insecure-ignore-tlog", "--allow-insecure-registry", ref)
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("COSIGN_PASSWORD", "wrong")
    assert berth_cli("sign", "--key", f"{prefix}.key", "--allow-insecure-registry", ref) == 1
    assert "wrong password" in capsys.readouterr().err


def test_provenance_attestations_interoperate_with_cosign(
        tmp_path: Path, registry: Registry, cosign: Path,
        berth_keys: tuple[Path, Path]) -> None:
    ref = pushed_image(tmp_path, registry, "built/app")
    scratch = ImageStore(tmp_path / "scratch")
    key = keys.decrypt_private_key(berth_keys[0].read_bytes(), b"pw")
    pub = keys.load_public_key(berth_keys[1].read_bytes())
    prov = BuildProvenance(source_repo="https://git.example/app.git", commit="0123abcd",
                           dockerfile_digest="sha256:" + "ab" * 32)

    async def read() -> tuple[str, list[dict[str, object]]]:
        async with RegistryClient(opts(registry)) as c:
            return await verified_provenance(c, parse(ref), [pub], scratch.blobs)

    async def attest_and_read() -> tuple[str, list[dict[str, object]]]:
        async with RegistryClient(opts(registry)) as c:
            await attest_image(c, parse(ref), key, prov, scratch.blobs)
        return await read()
    digest, statements = asyncio.run(attest_and_read())
    assert statements[0]["subject"] == [{"name": f"{registry.host}/built/app",
                                         "digest": {"sha256": digest.split(":")[1]}}]
    r = cosign_cmd(cosign, tmp_path, "verify-attestation", "--key", str(berth_keys[1]),
                   "--type", "slsaprovenance1", "--insecure-ignore-tlog",
                   "--allow-insecure-registry", ref)
    assert r.returncode == 0, r.stderr
    # and the other way: cosign attests, Berth verifies
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"buildDefinition": {"buildType": "x",
                                                    "externalParameters": {}},
                                "runDetails": {"builder": {"id": "cosign"}}}))
    r = cosign_cmd(cosign, tmp_path, "attest", "--key", str(berth_keys[0]), "--type",
                   "slsaprovenance1", "--predicate", str(pred), "--tlog-upload=false",
                   "--allow-insecure-registry", "-y", ref)
    assert r.returncode == 0, r.stderr
    _, statements = asyncio.run(read())
    builders = sorted(str(s["predicate"]["runDetails"]["builder"]["id"])  # type: ignore[index]
                      for s in statements)
    assert builders == ["berth build", "cosign"]


def test_engine_refuses_to_run_what_the_policy_refuses(netns: NetNS, tmp_path: Path,
                                                       berth_keys: tuple[Path, Path]) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"default": {"type": "accept"}, "scopes": {
        "busybox": {"type": "signedBy", "keys": [str(berth_keys[1])]}}}))
    with engine_env(netns, tmp_path) as env:
        resolver = TrustedResolver(env.images, policy_file)

        async def create(m: ContainerManager) -> str:
            rec = await m.create(CreateRequest(image=IMAGE, cmd=("echo", "trusted")))
            await m.start(rec.id)
            await m.wait(rec.id)
            return await output(m, rec.id)

        def run_with_policy() -> str:
            async def main() -> str:
                m = ContainerManager(env.config(), resolver, EventBus())
                await m.adopt()
                try:
                    return await create(m)
                finally:
                    for cid in list(m.containers):
                        await m.remove(cid, force=True)
                    await m.shutdown()
            return asyncio.run(main())

        with pytest.raises(PolicyDenied, match=r"busybox:test refused .* is not signed"):
            run_with_policy()
        # sign the local image's manifest digest (as a pull through the gate records it)
        key = keys.decrypt_private_key(berth_keys[0].read_bytes(), b"pw")
        digest = env.images.get(IMAGE).manifest_digest
        record_signatures(env.images, digest, [make_signature(key, parse(IMAGE), digest)])
        assert run_with_policy() == "trusted\n"
        assert leaks(env) == []
