"""The daemon's registry service: what the API's pull/push routes and the engine call.

`pull(ref)` and `push(ref)` are async generators of Docker's JSON progress
messages (`{"status": ..., "id": ..., "progressDetail": ...}`), ending with
`{"error": ..., "errorDetail": {"message": ...}}` on failure, as dockerd
streams them. The trust policy file is read at every pull and every
`check_run`, so editing it takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.policy import DEFAULT_PATH, PolicyGate, check_run, load_policy
from runtime.progress import JsonProgress
from runtime.registry.auth import Credentials, CredentialSource, CredentialStore, StaticCredentials
from runtime.registry.client import RegistryClient, RegistryOptions
from runtime.registry.transfer import pull, push
from runtime.store.images import ImageStore


@dataclass
class RegistryService:
    store: ImageStore
    options: RegistryOptions = field(default_factory=RegistryOptions)
    credentials: CredentialSource = field(default_factory=CredentialStore)
    policy_path: Path = DEFAULT_PATH

    def _creds(self, auth: tuple[str, Credentials] | None) -> CredentialSource:
        if auth is None:
            return self.credentials
        return StaticCredentials({auth[0]: auth[1]}, self.credentials)

    async def pull(self, ref: str, auth: tuple[str, Credentials] | None = None
                   ) -> AsyncIterator[dict[str, Any]]:
        async def work(client: RegistryClient, progress: JsonProgress) -> None:
            gate = PolicyGate(load_policy(self.policy_path), self.store)
            await pull(self.store, client, ref, progress=progress, trust=gate)
        async for msg in self._stream(work, auth):
            yield msg

    async def push(self, ref: str, auth: tuple[str, Credentials] | None = None
                   ) -> AsyncIterator[dict[str, Any]]:
        async def work(client: RegistryClient, progress: JsonProgress) -> None:
            await push(self.store, client, ref, progress=progress)
        async for msg in self._stream(work, auth):
            yield msg

    async def _stream(self, work: Callable[[RegistryClient, JsonProgress], Awaitable[None]],
                      auth: tuple[str, Credentials] | None) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        progress = JsonProgress(queue.put_nowait)

        async def run() -> None:
            try:
                async with RegistryClient(self.options, self._creds(auth)) as client:
                    await work(client, progress)
            except Exception as e:  # every failure becomes Docker's error message
                queue.put_nowait({"error": str(e), "errorDetail": {"message": str(e)}})
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (msg := await queue.get()) is not None:
                yield msg
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def check_run(self, ref: str) -> None:
        """For the engine, before it creates a container: raises PolicyDenied."""
        check_run(load_policy(self.policy_path), self.store, ref)
