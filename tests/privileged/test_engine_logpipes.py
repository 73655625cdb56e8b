"""Log FIFOs: a page while a container is quiet, grown when it writes a lot, no line lost."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.container.manager import ContainerManager
from runtime.container.spec import CreateRequest
from runtime.container.supervisor import IDLE_PIPE_SIZE, PIPE_SIZE
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import IMAGE, EngineEnv, engine_env, leaks, output, run_engine

F_GETPIPE_SZ = 1032


@pytest.fixture
def env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    with engine_env(netns, tmp_path) as e:
        yield e


def fifo_size(m: ContainerManager, cid: str, stream: str = "stdout") -> int:
    fd = os.open(m.run_dir(cid) / stream, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return int(fcntl.fcntl(fd, F_GETPIPE_SZ))
    finally:
        os.close(fd)


def test_a_quiet_container_has_one_page_pipes_a_chatty_one_gets_room(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        quiet = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000")))
        await m.start(quiet.id)
        assert fifo_size(m, quiet.id) == fifo_size(m, quiet.id, "stderr") == IDLE_PIPE_SIZE

        # 300 kB in one go, then wait: the pipe grew, and not a byte was lost.
        script = "head -c 300000 /dev/zero | tr '\\0' a; echo; sleep 1000"
        chatty = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", script)))
        await m.start(chatty.id)
        for _ in range(200):
            if len(await output(m, chatty.id)) == 300001:
                break
            await asyncio.sleep(0.05)
        assert await output(m, chatty.id) == "a" * 300000 + "\n"
        assert fifo_size(m, chatty.id) == PIPE_SIZE
        assert fifo_size(m, chatty.id, "stderr") == IDLE_PIPE_SIZE

    run_engine(env, scenario)
    assert leaks(env) == []


def test_pipes_grow_before_a_clean_stop_and_shrink_after_readoption(env: EngineEnv) -> None:
    async def first_life() -> str:
        m = env.manager()
        await m.adopt()
        rec = await m.create(CreateRequest(
            image=IMAGE, cmd=("sh", "-c", "sleep 1; head -c 100000 /dev/zero | tr '\\0' b; "
                              "echo; sleep 1000")))
        await m.start(rec.id)
        await m.shutdown()   # the container writes 100 kB while no engine reads
        assert fifo_size(m, rec.id) == PIPE_SIZE
        return rec.id

    cid = asyncio.run(first_life())
    time.sleep(2)   # it writes its 100 kB into the pipe while no engine runs

    async def second_life(m: ContainerManager) -> None:
        for _ in range(200):
            if len(await output(m, cid)) == 100001:
                break
            await asyncio.sleep(0.05)
        assert await output(m, cid) == "b" * 100000 + "\n"   # waited in the pipe
        for _ in range(100):   # quiet again: back to a page
            if fifo_size(m, cid) == IDLE_PIPE_SIZE:
                break
            await asyncio.sleep(0.05)
        assert fifo_size(m, cid) == IDLE_PIPE_SIZE

    run_engine(env, second_life)
    assert leaks(env) == []
