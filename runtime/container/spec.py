"""From a create request and the image's config to the spec a container runs.

Pure functions over frozen dataclasses: Docker's rules for entrypoint+cmd,
environment merging, user, working dir and hostname live here, unit-tested.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from runtime.container.errors import InvalidRequest
from runtime.oci import ImageConfig

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_TIMEOUT = 10
_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class RestartPolicyName(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


@dataclass(frozen=True)
class RestartPolicy:
    name: RestartPolicyName = RestartPolicyName.NO
    maximum_retry_count: int = 0

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """`--restart` syntax: no | always | unless-stopped | on-failure[:N]."""
        name, _, count = text.partition(":")
        try:
            policy = RestartPolicyName(name or "no")
        except ValueError:
            raise InvalidRequest(f"invalid restart policy {text!r}: use no, always, "
                                 f"unless-stopped or on-failure[:N]") from None
        if count and policy is not RestartPolicyName.ON_FAILURE:
            raise InvalidRequest(f"invalid restart policy {text!r}: only on-failure takes a count")
        try:
            return cls(policy, int(count) if count else 0)
        except ValueError:
            raise InvalidRequest(f"invalid restart policy {text!r}: bad count") from None


class NetworkMode(StrEnum):
    NONE = "none"
    HOST = "host"
    BRIDGE = "bridge"


@dataclass(frozen=True)
class VolumeRequest:
    """-v SRC:DST[:ro]: SRC is an absolute host path (bind) or a volume name."""

    source: str
    destination: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")

    @classmethod
    def parse(cls, text: str) -> VolumeRequest:
        parts = text.split(":")
        if len(parts) == 1:
            return cls("", parts[0])
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise InvalidRequest(f"invalid volume specification: {text!r}")
        return cls(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro")


def _frozen_map(m: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True, slots=True)   # one per container, kept by berthd
class CreateRequest:
    image: str
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    name: str | None = None
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    hostname: str = ""
    domainname: str = ""
    tty: bool = False
    open_stdin: bool = False
    labels: Mapping[str, str] = field(default_factory=_frozen_map)
    volumes: tuple[VolumeRequest, ...] = ()
    tmpfs: tuple[str, ...] = ()
    read_only: bool = False
    network_mode: str = "none"
    # Opaque to the engine: ports, links, aliases ... passed to the NetworkProvider.
    network_options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    memory: int | None = None
    memory_swap: int | None = None
    nano_cpus: int | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None
    io_weight: int | None = None
    restart_policy: RestartPolicy = RestartPolicy()
    auto_remove: bool = False
    stop_signal: str | None = None
    stop_timeout: int | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: str = "default"       # "default" | "unconfined"
    userns: bool | None = None     # None: the engine's default; False: --userns=host


@dataclass(frozen=True)
class ExecRequest:
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False        # -i: a pipe (or, with tty, the pty) takes the client's input
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    privileged: bool = False


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What the container runs, after the image's defaults were applied."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    user: str
    working_dir: str
    hostname: str
    tty: bool
    open_stdin: bool
    read_only: bool
    network_mode: str
    stop_signal: str
    stop_timeout: int
    labels: Mapping[str, str]
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    seccomp: str
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None


def merge_env(*layers: tuple[str, ...]) -> tuple[str, ...]:
    """Later layers override earlier ones by key; order of first appearance kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, sep, _ = item.partition("=")
            if not key:
                raise InvalidRequest(f"invalid environment variable: {item!r}")
            if sep:
                merged[key] = item
            else:
                # `-e KEY` with KEY unset on the client arrives bare: dockerd passes it
                # on malformed, so the process has no KEY (not an empty one).
                merged.pop(key, None)
    return tuple(merged.values())


def signal_number(name: str | int) -> int:
    """SIGTERM, TERM, 15 -> 15; bad names raise InvalidRequest."""
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise InvalidRequest(f"invalid signal: {name}") from None


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidRequest(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                             f"are allowed")
    return name.lstrip("/")


def build_spec(req: CreateRequest, image: ImageConfig, container_id: str) -> ContainerSpec:
    if req.entrypoint is not None:
        # Docker: setting the entrypoint drops the image's cmd.
        entrypoint: tuple[str, ...] = req.entrypoint
        cmd: tuple[str, ...] = req.cmd or ()
    else:
        entrypoint = image.entrypoint or ()
        cmd = req.cmd if req.cmd is not None else (image.cmd or ())
    args = entrypoint + cmd
    if not args:
        raise InvalidRequest("No command specified")  # dockerd's words
    working_dir = req.working_dir or image.working_dir or "/"
    if not working_dir.startswith("/"):
        raise InvalidRequest(f"the working directory '{working_dir}' is invalid, "
                             f"it needs to be an absolute path")
    hostname = req.hostname or container_id[:12]
    base = (DEFAULT_PATH,) if not any(e.startswith("PATH=") for e in image.env + req.env) else ()
    tty_env = ("TERM=xterm",) if req.tty else ()   # as dockerd adds for -t
    env = merge_env(base, image.env, (f"HOSTNAME={hostname}",), tty_env, req.env)
    stop_signal = req.stop_signal or image.stop_signal or "SIGTERM"
    signal_number(stop_signal)
    network_mode = req.network_mode or "none"
    if network_mode in ("default",):
        network_mode = NetworkMode.BRIDGE.value
    labels = dict(image.labels)
    labels.update(req.labels)
    return ContainerSpec(
        args=args, env=env, user=req.user or image.user, working_dir=working_dir,
        hostname=hostname, tty=req.tty, open_stdin=req.open_stdin, read_only=req.read_only,
        network_mode=network_mode, stop_signal=stop_signal,
        stop_timeout=req.stop_timeout if req.stop_timeout is not None else DEFAULT_STOP_TIMEOUT,
        labels=_frozen_map(labels), cap_add=req.cap_add, cap_drop=req.cap_drop,
        seccomp=req.seccomp, entrypoint=req.entrypoint if req.entrypoint is not None
        else image.entrypoint, cmd=req.cmd if req.cmd is not None else image.cmd,
    )
