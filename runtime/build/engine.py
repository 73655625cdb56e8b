"""RUN steps in a Berth container, through the engine (the builder's one seam to it).

The step's container is created from the intermediate image, started, its
output followed until it exits, and removed (with its anonymous volumes)
whatever happens, after the caller has committed its upper directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from runtime.store.commit import IdShift

Output = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class RunRequest:
    image_id: str
    argv: tuple[str, ...]
    env: tuple[str, ...]
    user: str
    working_dir: str
    network: str = "none"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class RunOutcome:
    container_id: str
    exit_code: int
    upper: Path
    ids: IdShift | None
    error: str = ""


class StepRunner(Protocol):
    def run(self, req: RunRequest, output: Output) -> contextlib.AbstractAsyncContextManager[
            RunOutcome]: ...


BUILD_LABEL = "dev.berth.build.step"


class EngineRunner:
    """StepRunner on berthd's ContainerManager."""

    # RUN containers of this daemon's running builds; any other container with
    # BUILD_LABEL was left by a daemon that died mid-build.
    active: set[str] = set()

    def __init__(self, manager: Any) -> None:
        self.mgr = manager

    async def sweep(self) -> list[str]:
        """Remove RUN containers that no running build owns (a crash's leftovers)."""
        from runtime.container.errors import ContainerError

        gone = []
        for rec in self.mgr.list(all=True, filters={"label": [BUILD_LABEL]}):
            if rec.id not in self.active:
                with contextlib.suppress(ContainerError):
                    await self.mgr.remove(rec.id, force=True, volumes=True)
                    gone.append(rec.id)
        return gone

    @contextlib.asynccontextmanager
    async def run(self, req: RunRequest, output: Output) -> AsyncIterator[RunOutcome]:
        from runtime.container.errors import ContainerError
        from runtime.container.spec import CreateRequest
        from runtime.logs import LogOptions

        rec = await self.mgr.create(CreateRequest(
            image=req.image_id, cmd=req.argv, entrypoint=(), env=req.env, user=req.user,
            working_dir=req.working_dir, network_mode=req.network,
            labels=MappingProxyType({BUILD_LABEL: "", **req.labels})))
        self.active.add(rec.id)
        try:
            await output(f" ---> Running in {rec.id[:12]}\n")
            error, code = "", -1
            try:
                await self.mgr.start(rec.id)
            except ContainerError as e:
                error = str(e)
            if not error:
                async for entry in self.mgr.logs(rec.id, LogOptions(follow=True)):
                    await output(entry.line.decode("utf-8", "replace"))
                code = (await self.mgr.wait(rec.id)).status_code
            ids = IdShift(rec.uid_base) if rec.uid_base else None
            yield RunOutcome(rec.id, code, self.mgr.data_dir(rec.id) / "upper", ids, error)
        finally:
            with contextlib.suppress(ContainerError):
                await self.mgr.remove(rec.id, force=True, volumes=True)
            self.active.discard(rec.id)
            await output(f" ---> Removed intermediate container {rec.id[:12]}\n")
