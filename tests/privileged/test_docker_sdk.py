"""The docker Python SDK (docker-py) against berthd over the unix socket, unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest
from docker.errors import APIError, ImageNotFound, NotFound

from tests.privileged.berthd import Berthd, berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import busybox_rootfs_tar


@pytest.fixture
def sdk(netns: NetNS) -> Iterator[tuple[docker.DockerClient, Berthd]]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        client = docker.DockerClient(base_url=d.host, version="auto", timeout=60)
        tar = busybox_rootfs_tar(work / "rootfs.tar")
        client.api.import_image(src=str(tar), repository="busybox", tag="latest")
        try:
            yield client, d
        finally:
            client.close()


def test_sdk_system_and_images(sdk: tuple[docker.DockerClient, Berthd]) -> None:
    client, daemon = sdk
    assert client.ping() is True
    version = client.version()
    assert version["Platform"]["Name"] == "Berth" and version["ApiVersion"] == "1.47"
    info = client.info()
    assert info["Images"] == 1 and info["DockerRootDir"] == str(daemon.data_root)

    image = client.images.get("busybox")
    assert image.tags == ["busybox:latest"]
    assert image.tag("mine/bb", "3") is True
    assert sorted(client.images.get(image.id).tags) == ["busybox:latest", "mine/bb:3"]
    assert image.history()[0]["Id"] == image.id
    client.images.remove("mine/bb:3")
    with pytest.raises(ImageNotFound):
        client.images.get("mine/bb:3")
    saved = b"".join(image.save(named=True))
    client.images.remove("busybox:latest")
    loaded = client.images.load(saved)
    assert [i.tags for i in loaded] == [["busybox:latest"]]


def test_sdk_containers(sdk: tuple[docker.DockerClient, Berthd]) -> None:
    client, _ = sdk
    assert client.containers.run("busybox", ["echo", "hi"], remove=True) == b"hi\n"

    c = client.containers.run("busybox", ["sh", "-c", "echo ready; exec sleep 300"],
                              name="svc", detach=True, environment={"MODE": "sdk"},
                              labels={"team": "a"})
    deadline = time.monotonic() + 20
    while b"ready" not in c.logs():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    c.reload()
    assert c.status == "running" and c.name == "svc" and c.labels == {"team": "a"}
    assert [x.name for x in client.containers.list(filters={"label": "team=a"})] == ["svc"]

    code, output = c.exec_run(["sh", "-c", "echo $MODE; echo err >&2; exit 2"], demux=True)
    assert code == 2 and output == (b"sdk\n", b"err\n")
    assert "sleep 300" in str(c.top()["Processes"])
    stats = c.stats(stream=False)
    assert stats["pids_stats"]["current"] == 1 and "cpu_stats" in stats

    c.pause()
    c.reload()
    assert c.status == "paused"
    c.unpause()
    c.rename("svc2")
    c.stop(timeout=1)
    assert c.wait()["StatusCode"] == 137
    c.reload()
    assert c.status == "exited" and c.name == "svc2"
    c.remove()
    with pytest.raises(NotFound):
        client.containers.get("svc2")

    with pytest.raises(APIError) as e:
        client.containers.run("busybox", ["true"], name="bad name!")
    assert e.value.status_code == 400


def test_sdk_events_and_volumes(sdk: tuple[docker.DockerClient, Berthd]) -> None:
    client, _ = sdk
    since = int(time.time()) - 1
    vol = client.volumes.create("sdkvol", labels={"k": "v"})
    assert vol.name == "sdkvol"
    client.containers.run("busybox", ["sh", "-c", "echo x > /d/f"], name="ev",
                          volumes={"sdkvol": {"bind": "/d", "mode": "rw"}}, remove=True)
    assert [v.name for v in client.volumes.list(filters={"label": "k=v"})] == ["sdkvol"]
    until = int(time.time()) + 1
    time.sleep(1.1)
    actions = [e["Action"] for e in client.events(since=since, until=until, decode=True,
                                                   filters={"container": "ev"})]
    for action in ("create", "start", "die", "destroy"):
        assert action in actions
    vol.remove()
    assert client.volumes.list() == []
    assert client.containers.prune()["ContainersDeleted"] is None
