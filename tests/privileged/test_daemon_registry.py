"""Push and pull through berthd's API: `berth push/pull` and the docker CLI's, against a
real docker-registry running in the test's network namespace."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.privileged.berthd import Berthd, berth_workdir, start_berthd, start_registry_in
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

DOCKER = "/usr/local/bin/docker"


@pytest.fixture
def setup(netns: NetNS) -> Iterator[tuple[Berthd, str]]:
    with berth_workdir() as work:
        registry, address = start_registry_in(netns, work)
        try:
            with start_berthd(netns, work, "--insecure-registry", address) as d:
                import_busybox(d.berth, work)
                yield d, address
        finally:
            registry.terminate()
            registry.wait(timeout=20)


def test_berth_push_then_pull_and_run(setup: tuple[Berthd, str]) -> None:
    d, registry = setup
    ref = f"{registry}/team/bb:1"
    d.berth("tag", "busybox", ref)
    pushed = d.berth("push", ref).stdout
    assert "sha256:" in pushed
    image_id = d.berth("inspect", "-f", "{{.Id}}", ref).stdout.strip()
    d.berth("rmi", ref, "busybox")
    assert d.berth("images", "-q").stdout == ""

    since = str(int(time.time()) - 1)
    d.berth("pull", ref)
    assert d.berth("inspect", "-f", "{{.Id}}", ref).stdout.strip() == image_id
    pulled = d.berth("events", "--since", since, "--until", str(int(time.time()) + 1),
                     "--filter", "type=image", "--filter", "event=pull").stdout
    assert f"image pull {ref}" in pulled
    assert d.berth("run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"

    # `run` pulls an image it does not have, as docker run does.
    d.berth("rmi", ref)
    auto = d.berth("run", "--rm", ref, "echo", "auto-pulled")
    assert auto.stdout == "auto-pulled\n"
    assert auto.stderr.startswith(f"Unable to find image '{ref}' locally")

    missing = d.berth("pull", f"{registry}/team/nothere:1", check=False)
    assert missing.returncode == 1 and "nothere" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_docker_cli_pull_and_push_through_berthd(setup: tuple[Berthd, str]) -> None:
    d, registry = setup
    env = {"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(d.data_root / "docker-cli")}

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "-H", d.host, *args], capture_output=True, text=True,
                              timeout=120, env=env, stdin=subprocess.DEVNULL)

    ref = f"{registry}/docker/bb:2"
    assert docker("tag", "busybox", ref).returncode == 0
    push = docker("push", ref)
    assert push.returncode == 0, push.stderr
    assert docker("rmi", ref).returncode == 0
    pull = docker("pull", ref)
    assert pull.returncode == 0, pull.stderr
    assert ref in docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout


def test_docker_sdk_pull_and_push_through_berthd(setup: tuple[Berthd, str]) -> None:
    import docker

    d, registry = setup
    client = docker.DockerClient(base_url=d.host, version="auto")
    try:
        image = client.images.get("busybox")
        repo = f"{registry}/sdk/bb"
        assert image.tag(repo, "3")
        lines = list(client.images.push(repo, "3", stream=True, decode=True))
        assert not [x for x in lines if "error" in x], lines
        client.images.remove(f"{repo}:3")
        pulled = client.images.pull(repo, "3")
        assert pulled.id == image.id and f"{repo}:3" in pulled.tags
    finally:
        client.close()
