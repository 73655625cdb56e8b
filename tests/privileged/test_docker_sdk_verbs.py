"""docker-py on the verbs test_docker_sdk.py leaves out: create + start, kill,
restart, remove(force), logs with since/until/tail/timestamps and follow, attach,
exec with a stopped container, container prune, and errors as docker-py's
exception classes (it reads Docker's JSON error shape)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import docker
import pytest
from docker.errors import APIError, NotFound

from tests.privileged.berthd import berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import busybox_rootfs_tar


@pytest.fixture
def client(netns: NetNS) -> Iterator[docker.DockerClient]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        c = docker.DockerClient(base_url=d.host, version="auto", timeout=60)
        c.api.import_image(src=str(busybox_rootfs_tar(work / "rootfs.tar")),
                           repository="busybox", tag="latest")
        try:
            yield c
        finally:
            c.close()


def test_sdk_create_start_kill_restart_remove(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", ["sh", "-c", "echo hi; exec sleep 300"],
                                 name="life")
    assert c.status == "created"
    with pytest.raises(APIError) as refused:
        c.exec_run(["true"])
    assert refused.value.status_code == 409 and "is not running" in str(refused.value)
    c.start()
    c.reload()
    assert c.status == "running"
    pid = c.attrs["State"]["Pid"]
    c.restart(timeout=1)
    c.reload()
    assert c.status == "running" and c.attrs["State"]["Pid"] != pid
    c.kill(signal="SIGKILL")
    assert c.wait()["StatusCode"] == 137
    with pytest.raises(APIError) as dead:
        c.kill()
    assert dead.value.status_code == 409 and "Cannot kill container: " in str(dead.value)
    c.start()
    with pytest.raises(APIError) as busy:
        c.remove()
    assert busy.value.status_code == 409
    c.remove(force=True)
    with pytest.raises(NotFound):
        client.containers.get("life")


def test_sdk_logs_and_attach(client: docker.DockerClient) -> None:
    c = client.containers.run("busybox", ["sh", "-c",
                                          "echo one; sleep 3; echo two; echo three"],
                              detach=True, name="talk")
    deadline = time.monotonic() + 20
    while c.logs() != b"one\n":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    followed = c.attach(stream=True, logs=False)   # from now on, until the exit
    time.sleep(0.5)
    boundary = time.time()     # a float: docker-py truncates a datetime to the second
    assert b"".join(c.logs(stream=True, follow=True)) == b"one\ntwo\nthree\n"
    assert b"".join(followed) == b"two\nthree\n"
    assert c.logs(tail=1) == b"three\n"
    assert c.logs(since=boundary) == b"two\nthree\n"
    assert c.logs(until=boundary) == b"one\n"
    stamped = c.logs(timestamps=True, tail=1).decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z three\n", stamped), stamped
    assert c.wait()["StatusCode"] == 0


def test_sdk_prune_and_top(client: docker.DockerClient) -> None:
    done = client.containers.run("busybox", ["true"], detach=True, name="done")
    done.wait()
    alive = client.containers.run("busybox", ["sleep", "300"], detach=True, name="alive")
    titles = alive.top()["Titles"]
    assert "PID" in titles and "CMD" in titles
    pruned = client.containers.prune()
    assert pruned["ContainersDeleted"] == [done.id]
    assert [x.name for x in client.containers.list(all=True)] == ["alive"]
    alive.remove(force=True)


def test_sdk_reads_an_images_config_fields_unguarded(client: docker.DockerClient) -> None:
    # An image imported without --change has an empty OCI config; dockerd still gives
    # every field, and scripts index them directly.
    config = client.images.get("busybox").attrs["Config"]
    assert config["Env"] is None and config["Entrypoint"] is None
    assert config["WorkingDir"] == "" and config["User"] == ""
