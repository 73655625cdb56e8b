"""OCI image-spec and runtime-spec types shared by the store and the engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    retries: int = 0


@dataclass(frozen=True)
class ImageConfig:
    """The `config` object of an OCI image configuration (image-spec config.md)."""

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    healthcheck: Healthcheck | None = None
    shell: tuple[str, ...] | None = None
    onbuild: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedImage:
    """An image ready to run: its id, the ref asked for, its unpacked layers."""

    id: str
    ref: str
    layer_dirs: tuple[Path, ...]
    config: ImageConfig


class ImageNotFound(LookupError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"No such image: {ref}")
