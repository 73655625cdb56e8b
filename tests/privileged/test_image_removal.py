"""`rmi` and `image prune` against a real berthd: images in use by containers and by
running builds, a built image's step images, and what `images` shows with and without -a."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import BERTH, ROOT, Berthd, berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

DOCKER = "/usr/local/bin/docker"


@pytest.fixture
def daemon(netns: NetNS) -> Iterator[tuple[Berthd, Path]]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        import_busybox(d.berth, work)
        ctx = work / "ctx"
        ctx.mkdir()
        yield d, ctx


def image_ids(d: Berthd, *args: str) -> list[str]:
    return d.berth("images", "-q", "--no-trunc", *args).stdout.split()


def api_ids(d: Berthd, query: str = "") -> list[str]:
    listing = d.request("GET", f"/images/json{query}").json()
    assert isinstance(listing, list)
    return [str(i["Id"]) for i in listing]


def test_rmi_of_the_last_tag_a_container_uses_is_refused_unless_forced(
        daemon: tuple[Berthd, Path]) -> None:
    d, _ = daemon
    image = d.berth("inspect", "-f", "{{.Id}}", "busybox").stdout.strip()
    cid = d.berth("create", "busybox", "echo", "still here").stdout.strip()
    refused = d.berth("rmi", "busybox", check=False)
    assert refused.returncode == 1
    assert (f'conflict: unable to remove repository reference "busybox" (must force) - '
            f"container {cid[:12]} is using its referenced image "
            f"{image.removeprefix('sha256:')[:12]}") in refused.stderr
    docker = subprocess.run([DOCKER, "-H", d.host, "rmi", "busybox"], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                        "DOCKER_CONFIG": str(d.data_root)})
    assert docker.returncode == 1 and "must force" in docker.stderr
    assert image_ids(d, "busybox") == [image]  # nothing changed

    # A second name may go: the image keeps one.
    d.berth("tag", "busybox", "mine:1")
    assert d.berth("rmi", "mine:1").stdout == "Untagged: mine:1\n"
    # Forced: only untagged, the container's image stays and it still runs.
    assert d.berth("rmi", "-f", "busybox").stdout == "Untagged: busybox:latest\n"
    assert image_ids(d, "-a") == [image]
    d.berth("start", cid)
    assert d.berth("wait", cid).stdout.strip() == "0"
    assert d.berth("logs", cid).stdout == "still here\n"
    # Once the container is gone, prune removes the now dangling image.
    d.berth("rm", cid)
    assert f"Deleted: {image}" in d.berth("image", "prune", "-f").stdout
    assert image_ids(d, "-a") == []


BUILT = """FROM busybox
ENV GREETING=hi
RUN echo "$GREETING" > /greeting
WORKDIR /app
CMD ["cat", "/greeting"]
"""


def test_rmi_of_a_built_image_deletes_its_step_images(daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    busybox = image_ids(d)
    (ctx / "Dockerfile").write_text(BUILT)
    d.berth("build", "-t", "app:1", str(ctx), timeout=180)
    app = d.berth("inspect", "-f", "{{.Id}}", "app:1").stdout.strip()
    # `images` hides the four step images below app:1; -a (CLI and API) shows them.
    assert set(image_ids(d)) == {*busybox, app}
    every = image_ids(d, "-a")
    assert len(every) == 6
    assert set(api_ids(d)) == set(image_ids(d))
    assert set(api_ids(d, "?all=1")) == set(every)
    steps = set(every) - {*busybox, app}
    # `history` names each step by its image, down to the tagged base.
    ids = d.berth("history", "-q", "--no-trunc", "app:1").stdout.split()
    assert ids[0] == app and set(ids[1:5]) == steps and ids[5:] == busybox

    out = d.berth("rmi", "app:1").stdout.splitlines()
    assert out[0] == "Untagged: app:1"
    assert out[1] == f"Deleted: {app}"
    assert {line.removeprefix("Deleted: ") for line in out[2:]} == steps and len(out) == 6
    assert image_ids(d, "-a") == busybox  # busybox is tagged: the chain stops there
    # The cache went with the step images: the next build runs every step again.
    again = d.berth("build", "-t", "app:1", str(ctx), timeout=180).stdout
    assert "Using cache" not in again
    assert d.berth("run", "--rm", "app:1").stdout == "hi\n"


def test_prune_removes_a_failed_builds_chain_in_one_call(daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    busybox = image_ids(d)
    (ctx / "Dockerfile").write_text("FROM busybox\nENV A=1\nRUN echo x > /x\nRUN false\n")
    r = d.berth("build", str(ctx), check=False, timeout=180)
    assert r.returncode == 1
    head = set(image_ids(d)) - set(busybox)
    assert len(head) == 1  # the last step that worked, untagged, is a dangling image
    assert set(image_ids(d, "-f", "dangling=true")) == head
    assert set(image_ids(d, "-a", "-f", "dangling=true")) == head
    assert len(image_ids(d, "-a")) == 3
    pruned = d.berth("image", "prune", "-f").stdout
    assert pruned.count("Deleted: ") == 2
    assert image_ids(d, "-a") == busybox


def test_prune_during_a_build_leaves_the_builds_images_alone(
        daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    (ctx / "data.txt").write_text("from stage one\n")
    # Stage one's image is untagged and without a child while stage two runs: a prune
    # without the build's hold would delete it before COPY --from reads it.
    (ctx / "Dockerfile").write_text("FROM busybox AS one\nCOPY data.txt /one\nENV X=1\n"
                                    "FROM busybox\nRUN sleep 4\nCOPY --from=one /one /one\n")
    client = subprocess.Popen([*BERTH, "-H", d.host, "build", "-t", "app:1", str(ctx)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        while not d.berth("ps", "-q").stdout.strip():  # stage two's RUN container
            assert client.poll() is None and time.monotonic() < deadline, "no RUN step"
            time.sleep(0.1)
        pruned = d.berth("image", "prune", "-f").stdout
        still_building = client.poll() is None
        out, _ = client.communicate(timeout=180)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert still_building, "the build ended before the prune: the test proved nothing"
    assert "Deleted" not in pruned
    assert client.returncode == 0, out
    assert d.berth("run", "--rm", "app:1", "cat", "/one").stdout == "from stage one\n"
    # The build is over: stage one's two images are a dangling chain now.
    assert d.berth("image", "prune", "-f").stdout.count("Deleted: ") == 2
