"""Push and pull against a real docker-registry, with skopeo and podman as peers,
and through a faulty proxy that lies, fails, truncates and stalls."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from runtime.container.manager import ContainerManager
from runtime.container.spec import CreateRequest
from runtime.oci import Descriptor, ImageNotFound, MediaType, sha256_digest
from runtime.registry.auth import CredentialStore
from runtime.registry.client import RegistryClient, RegistryError, RegistryOptions, Unauthorized
from runtime.registry.service import RegistryService
from runtime.registry.transfer import PullResult, PushResult, login, logout, pull, push
from runtime.store.archive import import_rootfs, save
from runtime.store.commit import commit_layer, create_image
from runtime.store.images import ImageStore
from tests.faultproxy import FaultProxy, Faults, Registry, busybox_rootfs, start_registry
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import engine_env, output, run_engine

T = TypeVar("T")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path) as reg:
        yield reg


@pytest.fixture
def busybox_tar(tmp_path: Path) -> bytes:
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(rootfs, arcname=".")
    return buf.getvalue()


def opts(*hosts: str, **kw: object) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset(hosts), retry_delay=0.01, **kw)  # type: ignore[arg-type]


def local_image(tmp_path: Path, busybox_tar: bytes, tag: str) -> ImageStore:
    store = ImageStore(tmp_path / "berth")
    import_rootfs(store, io.BytesIO(busybox_tar), tag=tag, changes=['CMD ["echo", "hi"]'])
    return store


def push_sync(store: ImageStore, ref: str, options: RegistryOptions) -> PushResult:
    async def go() -> PushResult:
        async with RegistryClient(options) as c:
            return await push(store, c, ref)
    return asyncio.run(go())


def pull_sync(store: ImageStore, ref: str, options: RegistryOptions,
              creds: CredentialStore | None = None) -> PullResult:
    async def go() -> PullResult:
        async with RegistryClient(options, creds) as c:
            return await pull(store, c, ref)
    return asyncio.run(go())


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env={**os.environ, **(env or {})}, timeout=300)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


def podman_env(tmp: Path) -> dict[str, str]:
    """podman 4.3 on this machine: MACHINE-NOTES.md's recipe, all state under tmp."""
    (tmp / "podman").mkdir(exist_ok=True)
    conf = tmp / "podman/containers.conf"
    conf.write_text('[containers]\nnetns="none"\n'
                    'default_ulimits=["nofile=20000:20000","nproc=32768:32768"]\n'
                    '[engine]\nruntime="runc"\ncgroup_manager="cgroupfs"\n'
                    'events_logger="file"\n')
    storage = tmp / "podman/storage.conf"
    storage.write_text(f'[storage]\ndriver="overlay"\ngraphroot="{tmp}/podman/graph"\n'
                       f'runroot="{tmp}/podman/run"\n')
    return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def test_push_then_skopeo_and_podman_pull_and_run(tmp_path: Path, registry: Registry,
                                                 busybox_tar: bytes) -> None:
    ref = f"{registry.host}/berth/busybox:1"
    store = local_image(tmp_path, busybox_tar, ref)
    # Chunked upload for the 2 MB layer, monolithic for the config.
    result = push_sync(store, ref, opts(registry.host, chunk_size=512 * 1024))
    info = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == result.digest
    assert info["Layers"] == list(store.get(ref).layer_blobs)
    sh("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
       f"oci:{tmp_path}/out:x")
    assert (tmp_path / "out/index.json").exists()
    env = podman_env(tmp_path)
    out = sh("podman", "run", "--rm", "--tls-verify=false", ref, env=env)
    assert out.strip() == "hi"
    sh("podman", "rmi", "-a", "-f", env=env)


def test_second_push_skips_existing_blobs_and_mounts_across_repos(
        tmp_path: Path, registry: Registry, busybox_tar: bytes) -> None:
    a, b = f"{registry.host}/team/a:1", f"{registry.host}/team/b:1"
    store = local_image(tmp_path, busybox_tar, a)
    o = opts(registry.host)
    first = push_sync(store, a, o)
    again = push_sync(store, a, o)
    store.tag(a, b)
    mounted = push_sync(store, b, o)
    assert (first.uploaded, again.existed, mounted.mounted) == (2, 2, 2)
    assert store.get(a).repo_digests  # the push recorded name@digest


def test_skopeo_push_then_berth_pull_resolves(tmp_path: Path, registry: Registry,
                                             busybox_tar: bytes) -> None:
    # skopeo re-encodes: gzip layers, Docker v2 schema 2 manifest.
    seed = local_image(tmp_path, busybox_tar, "seed:1")
    with (tmp_path / "seed.tar").open("wb") as f:
        save(seed, ["seed:1"], f)
    ref = f"{registry.host}/from/skopeo:v2"
    sh("skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2",
       "--dest-compress", f"docker-archive:{tmp_path}/seed.tar", f"docker://{ref}")
    store = ImageStore(tmp_path / "pulled")
    result = pull_sync(store, ref, opts(registry.host))
    img = store.resolve(ref)
    assert img.id == result.image.id
    assert img.config.cmd == ("echo", "hi")
    assert (img.layer_dirs[0] / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    manifest = json.loads(store.blobs.read(store.get(ref).manifest_digest))
    assert manifest["mediaType"] == MediaType.DOCKER_MANIFEST
    assert manifest["layers"][0]["mediaType"] == MediaType.DOCKER_LAYER_GZIP
    # by digest too
    digest = result.digest
    assert store.resolve(f"{registry.host}/from/skopeo@{digest}").id == img.id


def test_pull_of_an_index_picks_linux_amd64(tmp_path: Path, registry: Registry,
                                           busybox_tar: bytes) -> None:
    ref = f"{registry.host}/multi/app:1"
    store = local_image(tmp_path, busybox_tar, ref)
    pushed = push_sync(store, ref, opts(registry.host))
    data, manifest = store.manifest(store.lookup(ref))
    entry = {"mediaType": MediaType.OCI_MANIFEST, "digest": sha256_digest(data),
             "size": len(data)}
    index = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [
        {**entry, "platform": {"os": "linux", "architecture": "arm64"}},
        {**entry, "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()

    async def put_index() -> None:
        async with RegistryClient(opts(registry.host)) as c:
            await c.put_manifest(registry.host, "multi/app", "multi", index, MediaType.OCI_INDEX)
    asyncio.run(put_index())
    fresh = ImageStore(tmp_path / "fresh")
    res = pull_sync(fresh, f"{registry.host}/multi/app:multi", opts(registry.host))
    # The repo digest is the index's (as Docker shows it); the image is amd64's manifest.
    assert res.digest == sha256_digest(index) != pushed.digest
    assert fresh.get(res.image.id).manifest_digest == pushed.digest
    assert fresh.resolve(f"{registry.host}/multi/app@{res.digest}").id == manifest.config.digest


def test_https_is_default_unless_named_insecure(tmp_path: Path, registry: Registry) -> None:
    store = ImageStore(tmp_path / "s")
    with pytest.raises(RegistryError, match="gave up after"):
        pull_sync(store, f"{registry.host}/x:1", RegistryOptions(retry_delay=0.01,
                                                                 max_attempts=2))


# --- the faulty proxy ---


def with_proxy(registry: Registry, faults: Faults,
               fn: Callable[[FaultProxy], Awaitable[T]]) -> T:
    async def go() -> T:
        async with FaultProxy(registry.host, faults) as proxy:
            return await fn(proxy)
    return asyncio.run(go())


@pytest.fixture
def pushed(tmp_path: Path, registry: Registry, busybox_tar: bytes) -> str:
    ref = f"{registry.host}/bad/app:1"
    push_sync(local_image(tmp_path, busybox_tar, ref), ref, opts(registry.host))
    return "bad/app:1"


def pull_via(proxy: FaultProxy, store: ImageStore, repo_tag: str,
             **kw: object) -> Coroutine[None, None, PullResult]:
    async def go() -> PullResult:
        async with RegistryClient(opts(proxy.host, **kw)) as c:
            return await pull(store, c, f"{proxy.host}/{repo_tag}")
    return go()


def nothing_stored(store: ImageStore) -> None:
    assert store.list_images() == []
    assert list(store.layers.dir.iterdir()) == []


def test_truncated_blob_resumes_with_range(tmp_path: Path, registry: Registry,
                                           pushed: str) -> None:
    store = ImageStore(tmp_path / "p")
    faults = Faults(truncate_blobs=1, errors_5xx=2)
    with_proxy(registry, faults, lambda p: pull_via(p, store, pushed))
    assert any(s.startswith("GET") and "bytes=" in s for s in faults.seen), faults.seen
    assert len(store.list_images()) == 1


def test_stalled_blob_times_out_and_resumes(tmp_path: Path, registry: Registry,
                                           pushed: str) -> None:
    store = ImageStore(tmp_path / "p")
    faults = Faults(stall_blobs=1, stall_seconds=3)
    with_proxy(registry, faults, lambda p: pull_via(p, store, pushed, read_timeout=1.0))
    assert any("bytes=" in s for s in faults.seen)
    assert len(store.list_images()) == 1


def test_interrupted_pull_resumes_on_the_next_pull(tmp_path: Path, registry: Registry,
                                                   pushed: str) -> None:
    store = ImageStore(tmp_path / "p")
    faults = Faults(truncate_blobs=1)
    with pytest.raises(RegistryError, match="gave up after 1 attempts"):
        with_proxy(registry, faults, lambda p: pull_via(p, store, pushed, max_attempts=1))
    sizes = {p.stat().st_size for p in store.blobs.ingest_dir.glob("*.partial")}
    assert sizes and max(sizes) > 0
    nothing_stored(store)
    faults.seen.clear()
    with_proxy(registry, faults, lambda p: pull_via(p, store, pushed))
    ranged = {s.rsplit("bytes=", 1)[1] for s in faults.seen if "bytes=" in s}
    assert {f"{n}-" for n in sizes if n} <= ranged, (sizes, faults.seen)
    assert len(store.list_images()) == 1
    assert not list(store.blobs.ingest_dir.glob("*.partial"))


def test_server_ignoring_range_restarts_the_blob(tmp_path: Path, registry: Registry,
                                                 pushed: str) -> None:
    store = ImageStore(tmp_path / "p")
    faults = Faults(truncate_blobs=1, ignore_range=True)
    with_proxy(registry, faults, lambda p: pull_via(p, store, pushed))
    assert len(store.list_images()) == 1


@pytest.mark.parametrize(("faults", "message"), [
    (Faults(corrupt_blobs=True), "has digest sha256:.*expected"),
    (Faults(lie_manifest_size=True), "expected|gave up"),
    (Faults(oversize_manifest=True), "refused"),
    (Faults(lie_manifest_digest=True), "has digest sha256:.*expected sha256:0000"),
    (Faults(errors_5xx=1000), "gave up after 4 attempts: injected failure|HTTP 503"),
])
def test_lying_or_failing_registry_stores_nothing(tmp_path: Path, registry: Registry,
                                                  pushed: str, faults: Faults,
                                                  message: str) -> None:
    store = ImageStore(tmp_path / "p")
    with pytest.raises((RegistryError, ValueError), match=message):
        with_proxy(registry, faults, lambda p: pull_via(p, store, pushed))
    nothing_stored(store)
    with pytest.raises(ImageNotFound):
        store.resolve(pushed)
    # what is in the blob store is exactly what it claims to be
    for d in store.blobs:
        assert sha256_digest(store.blobs.read(d)) == d


def test_token_auth_login_and_logout(tmp_path: Path, registry: Registry, pushed: str) -> None:
    creds = CredentialStore(tmp_path / "cfg/auth.json")
    store = ImageStore(tmp_path / "p")
    faults = Faults(auth=("alice", "s3cret"))

    async def scenario(proxy: FaultProxy) -> None:
        o = opts(proxy.host)
        async with RegistryClient(o, creds) as c:
            with pytest.raises(Unauthorized, match="berth login"):
                await pull(store, c, f"{proxy.host}/{pushed}")
            with pytest.raises(Unauthorized, match="bad credentials"):
                await login(c, proxy.host, "alice", "wrong")
            assert creds.get(proxy.host) is None
            await login(c, proxy.host, "alice", "s3cret")
        async with RegistryClient(o, creds) as c:
            await pull(store, c, f"{proxy.host}/{pushed}")
        assert logout(proxy.host, creds)
        assert creds.get(proxy.host) is None

    with_proxy(registry, faults, scenario)
    assert stat.S_IMODE((tmp_path / "cfg/auth.json").stat().st_mode) == 0o600
    assert len(store.list_images()) == 1


def test_descriptor_sizes_checked_before_storing(tmp_path: Path, registry: Registry,
                                                 pushed: str) -> None:
    """A registry blob fetched with the wrong announced size is refused, not stored."""
    store = ImageStore(tmp_path / "p")

    async def go() -> None:
        async with RegistryClient(opts(registry.host)) as c:
            data, _, _ = await c.get_manifest(registry.host, "bad/app", "1")
            layer = json.loads(data)["layers"][0]
            wrong = Descriptor(layer["mediaType"], layer["digest"], layer["size"] - 1)
            with pytest.raises(RegistryError, match="expected"):
                await c.fetch_blob(registry.host, "bad/app", wrong, store.blobs)
    asyncio.run(go())
    assert list(store.blobs) == []


def test_failed_multi_layer_pull_leaves_no_layer_behind(tmp_path: Path, registry: Registry,
                                                        busybox_tar: bytes) -> None:
    ref = f"{registry.host}/multi/layers:1"
    src = local_image(tmp_path, busybox_tar, "base:1")
    layers = []
    for i in range(3):
        tree = tmp_path / f"tree{i}"
        tree.mkdir()
        (tree / f"file{i}").write_bytes(os.urandom(100_000))
        layers.append(commit_layer(src, tree))
    create_image(src, base=src.lookup("base:1"), layers=layers, tags=[ref])
    push_sync(src, ref, opts(registry.host))
    store = ImageStore(tmp_path / "p")
    faults = Faults(corrupt_only=layers[2].blob)
    with pytest.raises(RegistryError, match=layers[2].blob):
        with_proxy(registry, faults, lambda p: pull_via(p, store, "multi/layers:1"))
    nothing_stored(store)
    # verified blobs stay in the store: the retry does not fetch them again
    faults.corrupt_only = ""
    faults.seen.clear()
    result = with_proxy(registry, faults, lambda p: pull_via(p, store, "multi/layers:1"))
    config_digest = src.lookup(ref)
    assert not any(config_digest in s for s in faults.seen)
    assert any(layers[2].blob in s for s in faults.seen)
    assert len(store.resolve(result.image.id).layer_dirs) == 4


def test_service_streams_docker_progress_and_errors(tmp_path: Path, registry: Registry,
                                                    pushed: str) -> None:
    store = ImageStore(tmp_path / "svc")
    svc = RegistryService(store, opts(registry.host),
                          CredentialStore(tmp_path / "auth.json"), tmp_path / "no-policy.json")

    async def collect(ref: str) -> list[dict[str, object]]:
        return [m async for m in svc.pull(ref)]

    msgs = asyncio.run(collect(f"{registry.host}/{pushed}"))
    statuses = [m.get("status") for m in msgs]
    assert "Pull complete" in statuses and "Downloading" in statuses
    assert any(str(s).startswith("Digest: sha256:") for s in statuses)
    assert not any("error" in m for m in msgs)
    svc.check_run(f"{registry.host}/{pushed}")
    msgs = asyncio.run(collect(f"{registry.host}/bad/missing:1"))
    assert "manifest unknown" in str(msgs[-1]["error"])
    assert msgs[-1]["errorDetail"] == {"message": msgs[-1]["error"]}


def test_what_skopeo_pushes_berth_pulls_and_runs(netns: NetNS, tmp_path: Path,
                                                 registry: Registry, busybox_tar: bytes) -> None:
    seed = local_image(tmp_path / "seed", busybox_tar, "seed:1")
    with (tmp_path / "seed.tar").open("wb") as f:
        save(seed, ["seed:1"], f)
    ref = f"{registry.host}/skopeo/runme:1"
    sh("skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "oci",
       "--dest-compress", f"docker-archive:{tmp_path}/seed.tar", f"docker://{ref}")
    # Pull before the engine moves this test into its network namespace (the
    # registry listens on the machine's loopback), into the engine's data root.
    pull_sync(ImageStore(tmp_path / "data"), ref, opts(registry.host))
    with engine_env(netns, tmp_path) as env:
        async def scenario(m: ContainerManager) -> tuple[int, str]:
            rec = await m.create(CreateRequest(image=ref, cmd=("sh", "-c", "echo pulled; "
                                                                "busybox | head -1")))
            await m.start(rec.id)
            res = await m.wait(rec.id)
            return res.status_code, await output(m, rec.id)
        code, out = run_engine(env, scenario)
    assert code == 0
    assert out.startswith("pulled\nBusyBox v")


def test_basic_auth(tmp_path: Path, registry: Registry, pushed: str) -> None:
    creds = CredentialStore(tmp_path / "auth.json")
    store = ImageStore(tmp_path / "p")

    async def scenario(proxy: FaultProxy) -> None:
        async with RegistryClient(opts(proxy.host), creds) as c:
            with pytest.raises(Unauthorized, match="berth login"):
                await pull(store, c, f"{proxy.host}/{pushed}")
            with pytest.raises(Unauthorized):
                await login(c, proxy.host, "bob", "nope")
        async with RegistryClient(opts(proxy.host), creds) as c:
            await login(c, proxy.host, "bob", "pw")
            await pull(store, c, f"{proxy.host}/{pushed}")

    with_proxy(registry, Faults(basic=("bob", "pw")), scenario)
    assert len(store.list_images()) == 1


def test_push_through_failures_retries_and_never_half_tags(tmp_path: Path, registry: Registry,
                                                          busybox_tar: bytes) -> None:
    store = local_image(tmp_path, busybox_tar, "app:1")

    async def push_via(proxy: FaultProxy, name: str, **kw: object) -> PushResult:
        ref = f"{proxy.host}/{name}"
        store.tag("app:1", ref)
        async with RegistryClient(opts(proxy.host, **kw)) as c:
            return await push(store, c, ref)

    faults = Faults(errors_5xx=3)
    with_proxy(registry, faults, lambda p: push_via(p, "flaky/app:1"))
    assert faults.errors_5xx == 0
    faults = Faults(errors_5xx=1000)
    with pytest.raises(RegistryError, match="gave up after 4 attempts"):
        with_proxy(registry, faults, lambda p: push_via(p, "down/app:1"))
    # the tag never appeared in the registry
    tags = subprocess.run(["skopeo", "list-tags", "--tls-verify=false",
                           f"docker://{registry.host}/down/app"], capture_output=True, text=True)
    assert tags.returncode != 0 or json.loads(tags.stdout)["Tags"] == []
    info = json.loads(sh("skopeo", "inspect", "--tls-verify=false",
                         f"docker://{registry.host}/flaky/app:1"))
    assert info["Layers"] == list(store.get("app:1").layer_blobs)
