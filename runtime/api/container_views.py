"""Docker's JSON for containers, both ways: create bodies in, inspect/ps/stats out.

Pure functions over the engine's records, unit-tested against the shapes
the docker CLI and docker-py read.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.api.errors import BadRequest
from runtime.cgroups import Stats
from runtime.cli.common import human_duration
from runtime.container.spec import CreateRequest, RestartPolicy, RestartPolicyName, VolumeRequest
from runtime.container.state import State, Status
from runtime.rootfs import MASKED_PATHS, READONLY_PATHS, RootfsSpec, VolumeKind
from runtime.store.containers import ContainerRecord

ZERO_TIME = "0001-01-01T00:00:00Z"
_NS = 1_000_000_000


def rfc3339(stamp: float) -> str:
    if not stamp:
        return ZERO_TIME
    whole = int(stamp)
    nanos = round((stamp - whole) * _NS)
    base = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def _strings(value: Any, field: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BadRequest(f"invalid {field}: expected a string or a list of strings")


# The modes dockerd accepts after a bind's destination (volume/mounts.go).
_BIND_MODES = frozenset({"ro", "rw", "z", "Z", "shared", "rshared", "slave", "rslave",
                         "private", "rprivate", "nocopy", "consistent", "cached", "delegated"})


def _volumes(body: Mapping[str, Any], hc: Mapping[str, Any]) -> tuple[tuple[VolumeRequest, ...],
                                                                     tuple[str, ...]]:
    volumes: list[VolumeRequest] = []
    tmpfs: list[str] = []
    for bind in hc.get("Binds") or []:
        parts = str(bind).split(":")
        if len(parts) == 3:
            # Docker accepts SELinux and propagation flags beside ro/rw; only ro matters here.
            flags = set(parts[2].split(","))
            if not flags <= _BIND_MODES or {"ro", "rw"} <= flags:
                raise BadRequest(f"invalid mode: {parts[2]}")
            parts = [parts[0], parts[1], "ro" if "ro" in flags else "rw"]
        volumes.append(VolumeRequest.parse(":".join(parts)))
    for m in hc.get("Mounts") or []:
        kind, target = m.get("Type", "volume"), m.get("Target") or m.get("Destination")
        if not target:
            raise BadRequest("invalid mount config: Target is required")
        if kind == "tmpfs":
            tmpfs.append(target)
        elif kind in ("bind", "volume"):
            volumes.append(VolumeRequest(m.get("Source") or "", target,
                                         bool(m.get("ReadOnly"))))
        else:
            raise BadRequest(f"invalid mount config: mount type {kind!r} is not supported")
    for dst, opts in (hc.get("Tmpfs") or {}).items():
        tmpfs.append(f"{dst}:{opts}" if opts else dst)
    # Config.Volumes lists anonymous volumes, but clients (docker-py) also list the
    # destinations they bind there: those are not anonymous (Docker skips them too).
    taken = {os.path.normpath(v.destination) for v in volumes} | \
        {os.path.normpath(t.split(":", 1)[0]) for t in tmpfs}
    for dst in body.get("Volumes") or {}:
        if os.path.normpath(dst) not in taken:
            volumes.append(VolumeRequest("", dst))
    return tuple(volumes), tuple(tmpfs)


def _nano_cpus(hc: Mapping[str, Any]) -> int | None:
    if hc.get("NanoCpus"):
        return int(hc["NanoCpus"])
    quota, period = hc.get("CpuQuota") or 0, hc.get("CpuPeriod") or 100_000
    if quota > 0:
        return int(quota * _NS // period)
    return None


_MIN_MEMORY = 6 << 20   # dockerd's linuxMinMemory


def _check_memory(memory: int, swap: int) -> None:
    """dockerd's checks of --memory/--memory-swap, with its messages."""
    if 0 < memory < _MIN_MEMORY:
        raise BadRequest("Minimum memory limit allowed is 6MB")
    if memory > 0 and 0 < swap < memory:
        raise BadRequest("Minimum memoryswap limit should be larger than memory limit, "
                         "see usage")
    if memory <= 0 and swap > 0:
        raise BadRequest("You should always set the Memory limit when using Memoryswap "
                         "limit, see usage")


def create_request(body: Mapping[str, Any], name: str | None,
                   network_options: Mapping[str, object]) -> CreateRequest:
    """POST /containers/create body -> the engine's CreateRequest (validated shape only)."""
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object")
    image = body.get("Image")
    if not image or not isinstance(image, str):
        raise BadRequest("Config.Image is required")
    hc: Mapping[str, Any] = body.get("HostConfig") or {}
    entrypoint = _strings(body.get("Entrypoint"), "Entrypoint")
    if entrypoint == ("",):
        entrypoint = ()  # --entrypoint "": no entrypoint at all
    restart = hc.get("RestartPolicy") or {}
    try:
        policy = RestartPolicy(RestartPolicyName(restart.get("Name") or "no"),
                               int(restart.get("MaximumRetryCount") or 0))
    except ValueError:
        raise BadRequest(f"invalid restart policy {restart.get('Name')!r}") from None
    security = list(hc.get("SecurityOpt") or [])
    privileged = bool(hc.get("Privileged"))
    seccomp = "unconfined" if privileged or any(
        s.replace(":", "=") == "seccomp=unconfined" for s in security) else "default"
    cap_add = tuple(hc.get("CapAdd") or ()) + (("ALL",) if privileged else ())
    mode = str(hc.get("NetworkMode") or "default")
    volumes, tmpfs = _volumes(body, hc)
    _check_memory(int(hc.get("Memory") or 0), int(hc.get("MemorySwap") or 0))
    return CreateRequest(
        image=image, cmd=_strings(body.get("Cmd"), "Cmd"), entrypoint=entrypoint, name=name,
        env=tuple(body.get("Env") or ()), user=body.get("User") or "",
        working_dir=body.get("WorkingDir") or "", hostname=body.get("Hostname") or "",
        domainname=body.get("Domainname") or "", tty=bool(body.get("Tty")),
        open_stdin=bool(body.get("OpenStdin")), labels=dict(body.get("Labels") or {}),
        volumes=volumes, tmpfs=tmpfs, read_only=bool(hc.get("ReadonlyRootfs")),
        network_mode="bridge" if mode == "default" else mode,
        network_options=network_options,
        memory=hc.get("Memory") or None, memory_swap=hc.get("MemorySwap") or None,
        nano_cpus=_nano_cpus(hc), cpu_shares=hc.get("CpuShares") or None,
        pids_limit=hc.get("PidsLimit") or None, io_weight=hc.get("BlkioWeight") or None,
        restart_policy=policy, auto_remove=bool(hc.get("AutoRemove")),
        stop_signal=body.get("StopSignal") or None, stop_timeout=body.get("StopTimeout"),
        cap_add=cap_add, cap_drop=tuple(hc.get("CapDrop") or ()), seccomp=seccomp,
        userns=False if hc.get("UsernsMode") == "host" else None)


# HostConfig fields a client may set that berthd does not apply: said in the create
# response's Warnings rather than dropped silently.
_IGNORED_HOST_CONFIG = ("Ulimits", "ShmSize", "Init", "Devices", "DeviceRequests",
                        "OomKillDisable", "OomScoreAdj", "CpusetCpus", "CpusetMems",
                        "KernelMemory", "MemoryReservation", "Sysctls", "GroupAdd",
                        "IpcMode", "PidMode", "UTSMode", "CgroupParent", "Runtime")


def _limits(req: CreateRequest) -> dict[str, object]:
    return {"memory": req.memory or req.memory_swap, "cpu": req.nano_cpus or req.cpu_shares,
            "pids": req.pids_limit, "io": req.io_weight}


def asks_limits(req: CreateRequest) -> bool:
    return any(_limits(req).values())


def unenforced_limits(req: CreateRequest, missing: Sequence[str], root: object) -> list[str]:
    """Create warnings for limits whose cgroup controller this host lacks (dockerd warns
    too, "Limitation discarded"); the docker CLI prints each as WARNING: ..."""
    return [f"{name} limit not applied: the {name} cgroup controller is not available "
            f"under {root}" for name, value in _limits(req).items() if value and name in missing]


def ignored_fields(body: Mapping[str, Any]) -> list[str]:
    hc: Mapping[str, Any] = body.get("HostConfig") or {}
    return [f"berthd does not apply HostConfig.{key}: it was ignored"
            for key in _IGNORED_HOST_CONFIG
            if hc.get(key) not in (None, "", 0, False, [], {}, "private")]


# --- out ----------------------------------------------------------------------


def status_text(state: State, now: float | None = None) -> str:
    """The `Status` column of `docker ps`: 'Up 3 minutes', 'Exited (0) 2 seconds ago'."""
    now = time.time() if now is None else now
    s = state.status
    if s in (Status.RUNNING, Status.PAUSED):
        text = f"Up {human_duration(now - state.started_at)}"
        return text + " (Paused)" if s is Status.PAUSED else text
    if s is Status.RESTARTING:
        return f"Restarting ({state.exit_code}) {human_duration(now - state.finished_at)} ago"
    if s is Status.EXITED:
        if not state.finished_at:
            return f"Exited ({state.exit_code})"
        return f"Exited ({state.exit_code}) {human_duration(now - state.finished_at)} ago"
    if s is Status.REMOVING:
        return "Removal In Progress"
    if s is Status.DEAD:
        return "Dead"
    return "Created"


def state_json(state: State) -> dict[str, Any]:
    s = state.status
    return {
        "Status": s.value, "Running": s in (Status.RUNNING, Status.PAUSED),
        "Paused": s is Status.PAUSED, "Restarting": s is Status.RESTARTING,
        "OOMKilled": state.oom_killed, "Dead": s is Status.DEAD, "Pid": state.pid,
        "ExitCode": state.exit_code, "Error": state.error,
        "StartedAt": rfc3339(state.started_at), "FinishedAt": rfc3339(state.finished_at),
    }


def network_json(rec: ContainerRecord) -> dict[str, Any]:
    net: Mapping[str, Any] = rec.network or {}
    return {
        "Bridge": "", "SandboxID": rec.id if rec.spec.network_mode != "host" else "",
        "SandboxKey": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": dict(net.get("ports") or {}),
        "IPAddress": net.get("ip_address", ""), "Gateway": net.get("gateway", ""),
        "MacAddress": net.get("mac_address", ""), "IPPrefixLen": 0,
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "",
        "Networks": dict(net.get("networks") or {}),
    }


def port_list(ports: Mapping[str, Any]) -> list[dict[str, Any]]:
    """NetworkSettings.Ports -> the `Ports` list of /containers/json."""
    out: list[dict[str, Any]] = []
    for key, bindings in sorted(ports.items()):
        port, _, proto = key.partition("/")
        if not bindings:
            out.append({"PrivatePort": int(port), "Type": proto or "tcp"})
        for b in bindings or []:
            out.append({"IP": b.get("HostIp") or "0.0.0.0", "PrivatePort": int(port),
                        "PublicPort": int(b.get("HostPort") or 0), "Type": proto or "tcp"})
    return out


def mounts_json(rec: ContainerRecord) -> list[dict[str, Any]]:
    out = []
    for v in rec.volumes:
        entry: dict[str, Any] = {"Type": v.kind.value, "Source": v.source,
                                 "Destination": v.destination, "Mode": "ro" if v.read_only else "",
                                 "RW": not v.read_only, "Propagation": "rprivate"}
        if v.kind is VolumeKind.VOLUME:
            entry.update(Name=os.path.basename(os.path.dirname(v.source)), Driver="local",
                         Mode="z" if not v.read_only else "ro", Propagation="")
        out.append(entry)
    return out


def memory_swap(memory: int | None, swap: int | None, swap_limit: bool) -> int:
    """HostConfig.MemorySwap as dockerd reports it, and as the cgroup has it.

    dockerd stores twice the memory when --memory-swap is not given (swap up to
    the memory limit; runtime/cgroups/memory.py writes memory.swap.max so), and -1
    where swap cannot be limited ("Memory limited without swap")."""
    if not memory or memory <= 0:
        return swap or 0
    if not swap_limit:
        return -1
    return swap if swap else 2 * memory


def host_config_json(rec: ContainerRecord, log_type: str,
                     swap_limit: bool = True) -> dict[str, Any]:
    req = rec.request
    opts: Mapping[str, Any] = req.network_options or {}
    return {
        "Binds": [f"{v.source}:{v.destination}" + (":ro" if v.read_only else "")
                  for v in req.volumes if v.source] or None,
        "NetworkMode": rec.spec.network_mode,
        "PortBindings": dict(opts.get("PortBindings") or {}),
        "PublishAllPorts": bool(opts.get("PublishAllPorts")),
        "Links": list(opts.get("Links") or []) or None,
        "RestartPolicy": {"Name": req.restart_policy.name.value,
                          "MaximumRetryCount": req.restart_policy.maximum_retry_count},
        "AutoRemove": req.auto_remove, "ReadonlyRootfs": req.read_only,
        "Memory": req.memory or 0,
        "MemorySwap": memory_swap(req.memory, req.memory_swap, swap_limit),
        "NanoCpus": req.nano_cpus or 0, "CpuShares": req.cpu_shares or 0,
        "PidsLimit": req.pids_limit, "BlkioWeight": req.io_weight or 0,
        "CapAdd": list(req.cap_add) or None, "CapDrop": list(req.cap_drop) or None,
        "Privileged": "ALL" in req.cap_add,
        "SecurityOpt": ["seccomp=unconfined"] if req.seccomp == "unconfined" else None,
        "Tmpfs": {t.split(":", 1)[0]: (t.split(":", 1)[1:] or [""])[0] for t in req.tmpfs}
        or None,
        "UsernsMode": "host" if not rec.uid_base else "",
        "LogConfig": {"Type": log_type, "Config": {}},
        "Dns": list(opts.get("Dns") or []), "ExtraHosts": list(opts.get("ExtraHosts") or [])
        or None,
        # What berthd does and does not offer, said as dockerd says its defaults (format
        # templates such as {{.HostConfig.ShmSize}} read them).
        "ShmSize": RootfsSpec.shm_size, "MaskedPaths": list(MASKED_PATHS),
        "ReadonlyPaths": list(READONLY_PATHS), "IpcMode": "private", "PidMode": "",
        "UTSMode": "", "CgroupnsMode": "private", "Cgroup": "", "CgroupParent": "",
        "Runtime": "berth", "Isolation": "", "CpuPeriod": 0, "CpuQuota": 0,
        "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
        "CpuCount": 0, "CpuPercent": 0, "MemoryReservation": 0, "MemorySwappiness": None,
        "OomKillDisable": False, "OomScoreAdj": 0, "Ulimits": None, "Devices": [],
        "DeviceRequests": None, "DeviceCgroupRules": None, "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [],
        "BlkioDeviceWriteIOps": [], "IOMaximumBandwidth": 0, "IOMaximumIOps": 0,
        "DnsOptions": [], "DnsSearch": [], "GroupAdd": None, "VolumesFrom": None,
        "VolumeDriver": "", "ContainerIDFile": "", "ConsoleSize": [0, 0],
    }


def inspect_json(rec: ContainerRecord, *, log_path: str, log_type: str,
                 exec_ids: Sequence[str] = (), swap_limit: bool = True) -> dict[str, Any]:
    spec, req = rec.spec, rec.request
    opts: Mapping[str, Any] = req.network_options or {}
    exposed: dict[str, dict[str, Any]] = {p: {} for p in opts.get("ExposedPorts") or []}
    return {
        "Id": rec.id, "Created": rfc3339(rec.created),
        "Path": spec.args[0] if spec.args else "", "Args": list(spec.args[1:]),
        "State": state_json(rec.state), "Image": rec.image_id,
        "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "", "LogPath": log_path,
        "Name": f"/{rec.name}", "RestartCount": rec.state.restart_count, "Driver": "overlay2",
        "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        "ExecIDs": list(exec_ids) or None,
        "HostConfig": host_config_json(rec, log_type, swap_limit),
        "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": ":".join(reversed(rec.layers))}},
        "Mounts": mounts_json(rec),
        "Config": {
            "Hostname": spec.hostname, "Domainname": req.domainname, "User": spec.user,
            "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
            "ExposedPorts": exposed or None, "Tty": spec.tty, "OpenStdin": spec.open_stdin,
            "StdinOnce": False, "Env": list(spec.env),
            "Cmd": list(spec.cmd) if spec.cmd is not None else None,
            "Image": rec.image_ref, "Volumes": {v.destination: {} for v in req.volumes
                                                if not v.source} or None,
            "WorkingDir": spec.working_dir,
            "Entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
            "OnBuild": None, "Labels": dict(spec.labels), "StopSignal": spec.stop_signal,
            "StopTimeout": spec.stop_timeout,
        },
        "NetworkSettings": network_json(rec),
        "Warnings": list(rec.warnings) or None,
    }


def summary_json(rec: ContainerRecord, now: float | None = None) -> dict[str, Any]:
    """One entry of GET /containers/json."""
    net = network_json(rec)
    return {
        "Id": rec.id, "Names": [f"/{rec.name}"], "Image": rec.image_ref,
        "ImageID": rec.image_id, "Command": " ".join(rec.spec.args),
        "Created": int(rec.created), "Ports": port_list(net["Ports"]),
        "Labels": dict(rec.spec.labels), "State": rec.state.status.value,
        "Status": status_text(rec.state, now),
        "HostConfig": {"NetworkMode": rec.spec.network_mode},
        "NetworkSettings": {"Networks": net["Networks"]},
        "Mounts": mounts_json(rec),
    }


def system_cpu_ns() -> int:
    """Host CPU time of all CPUs (/proc/stat), the denominator of `docker stats`' CPU %."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields) * _NS // ticks


def net_dev(pid: int) -> dict[str, dict[str, int]]:
    """Interfaces of the netns `pid` lives in, from /proc/PID/net/dev (loopback left out)."""
    out: dict[str, dict[str, int]] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, data = line.partition(":")
        name = name.strip()
        v = [int(x) for x in data.split()]
        if name == "lo" or len(v) < 16:
            continue
        out[name] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2],
                     "rx_dropped": v[3], "tx_bytes": v[8], "tx_packets": v[9],
                     "tx_errors": v[10], "tx_dropped": v[11]}
    return out


def mem_total() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_json(s: Stats | None, system_ns: int) -> dict[str, Any]:
    usage = (s.cpu_usage_usec * 1000) if s else 0
    return {"cpu_usage": {"total_usage": usage,
                          "usage_in_kernelmode": (s.cpu_system_usec * 1000) if s else 0,
                          "usage_in_usermode": (s.cpu_user_usec * 1000) if s else 0},
            "system_cpu_usage": system_ns, "online_cpus": os.cpu_count() or 1,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def stats_json(rec: ContainerRecord, s: Stats, pre: Stats | None, system_ns: int,
               pre_system_ns: int, read: float, pre_read: float) -> dict[str, Any]:
    stat = dict(s.memory_stat)
    return {
        "id": rec.id, "name": f"/{rec.name}",
        "read": rfc3339(read), "preread": rfc3339(pre_read),
        "pids_stats": {"current": s.pids_current, **({"limit": s.pids_max}
                                                     if s.pids_max else {})},
        "num_procs": 0,
        "cpu_stats": cpu_json(s, system_ns),
        "precpu_stats": cpu_json(pre, pre_system_ns),
        "memory_stats": {"usage": s.memory_current, "limit": s.memory_max or mem_total(),
                         "stats": stat, "failcnt": s.oom_kills},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": s.io_read_bytes},
            {"major": 0, "minor": 0, "op": "write", "value": s.io_write_bytes}]},
        "storage_stats": {},
        "networks": net_dev(rec.state.pid) if rec.state.pid else {},
    }
