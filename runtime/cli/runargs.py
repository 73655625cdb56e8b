"""`berth run`/`berth create` flags, and their translation to Docker's create body.

`add_run_flags` declares the flags once; `create_body` turns parsed flags
into the JSON of `POST /containers/create` (Config plus HostConfig) with no
side effect other than reading the environment for `-e NAME`, so the unit
tests check the translation flag by flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from runtime.cli.common import UsageError, parse_bytes, parse_key_values

RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--name", help="assign a name to the container")
    a("-i", "--interactive", action="store_true", help="keep STDIN open")
    a("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    a("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
      help="set an environment variable (KEY alone copies it from this shell)")
    a("--env-file", action="append", default=[], metavar="FILE", help="read KEY=VALUE lines")
    a("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
      help="bind mount a host path or a named volume")
    a("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]", help="mount a tmpfs")
    a("--mount", action="append", default=[], metavar="type=bind,source=S,target=T[,readonly]",
      help="attach a bind, volume or tmpfs mount (Docker's --mount syntax)")
    a("--label-file", action="append", default=[], metavar="FILE", help="read KEY=VALUE labels")
    a("--userns", choices=("host", ""), help="host: no user namespace for this container")
    a("-w", "--workdir", help="working directory inside the container")
    a("-u", "--user", help="user[:group] to run as (name or id)")
    a("-h", "--hostname", help="container host name")
    a("--domainname", help="container NIS domain name")
    a("--entrypoint", help="override the image's entrypoint")
    a("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="set a label")
    a("-m", "--memory", help="memory limit (e.g. 512m)")
    a("--memory-swap", help="memory + swap limit, -1 for unlimited swap")
    a("--cpus", type=float, help="number of CPUs (e.g. 1.5)")
    a("--cpu-shares", type=int, help="relative CPU weight")
    a("--pids-limit", type=int, help="maximum number of processes")
    a("--blkio-weight", type=int, help="relative block IO weight (10-1000)")
    a("--restart", default="no", help="no, on-failure[:N], always, unless-stopped")
    a("--network", "--net", dest="network", help="network mode: none, host, bridge or NAME")
    a("--network-alias", "--net-alias", dest="network_alias", action="append", default=[],
      help="another name for the container on its user network")
    a("--ip", help="IPv4 address on its network")
    a("--read-only", action="store_true", help="mount the root filesystem read-only")
    a("-p", "--publish", action="append", default=[], metavar="[IP:][HOST:]CONTAINER[/PROTO]",
      help="publish a container port")
    a("-P", "--publish-all", action="store_true", help="publish every exposed port")
    a("--expose", action="append", default=[], metavar="PORT", help="expose a port")
    a("--link", action="append", default=[], metavar="NAME[:ALIAS]", help="link a container")
    a("--add-host", action="append", default=[], metavar="HOST:IP", help="add an /etc/hosts line")
    a("--dns", action="append", default=[], help="DNS server")
    a("--cap-add", action="append", default=[], help="add a capability")
    a("--cap-drop", action="append", default=[], help="drop a capability")
    a("--privileged", action="store_true", help="all capabilities, no seccomp")
    a("--security-opt", action="append", default=[], help="e.g. seccomp=unconfined")
    a("--stop-signal", help="signal that stops the container")
    a("--stop-timeout", type=int, help="seconds before stop kills")
    a("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]", help="set a ulimit")
    a("--init", action="store_true", help="accepted for compatibility (berthd reaps)")
    a("--shm-size", help="size of /dev/shm")
    a("--platform", help="accepted for compatibility (linux only)")
    a("--pull", choices=("missing", "never", "always"), default="missing",
      help="image pull policy")
    a("image", help="image to run")
    a("command", nargs=argparse.REMAINDER, help="command and arguments")


def parse_restart(text: str) -> dict[str, Any]:
    name, _, count = text.partition(":")
    if name not in RESTART_POLICIES:
        raise UsageError(f"invalid restart policy {text!r}: use one of no, always, "
                         "unless-stopped, on-failure[:N]")
    if count and name != "on-failure":
        raise UsageError(f"invalid restart policy {text!r}: only on-failure takes a count")
    try:
        retries = int(count) if count else 0
    except ValueError:
        raise UsageError(f"invalid restart policy {text!r}: bad retry count") from None
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": retries}


def read_lines(files: list[str]) -> list[str]:
    """The KEY=VALUE lines of --env-file/--label-file files (blank and # lines skipped)."""
    out: list[str] = []
    for f in files:
        try:
            with open(f) as kv_file:
                lines = kv_file.read().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read {f}: {e.strerror}") from e
        out += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def parse_env(items: list[str], files: list[str],
              environ: Mapping[str, str] = os.environ) -> list[str]:
    env: list[str] = []
    items = read_lines(files) + items
    for item in items:
        if "=" in item:
            env.append(item)
        elif item in environ:
            env.append(f"{item}={environ[item]}")
    return env


def parse_port(spec: str) -> tuple[str, dict[str, str] | None]:
    """'[ip:][host:]container[/proto]' -> ('80/tcp', {'HostIp', 'HostPort'}|None)."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise UsageError(f"invalid port {spec!r}: protocol must be tcp, udp or sctp")
    if body.startswith("["):
        ip, _, rest = body[1:].partition("]")
        parts = [ip, *rest.lstrip(":").split(":")]
    else:
        parts = body.split(":")
    if len(parts) == 1:
        host_ip, host_port, container = "", None, parts[0]
    elif len(parts) == 2:
        host_ip, host_port, container = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_port, container = parts
    else:
        raise UsageError(f"invalid port {spec!r}: expected [IP:][HOST:]CONTAINER[/PROTO]")
    for port in (container, host_port):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise UsageError(f"invalid port {spec!r}: {port!r} is not a port number")
    key = f"{container}/{proto}"
    if host_port is None:
        return key, {"HostIp": "", "HostPort": ""}
    return key, {"HostIp": host_ip, "HostPort": host_port}


def parse_mount(spec: str) -> dict[str, Any]:
    """--mount type=bind,source=/a,target=/b,readonly -> a HostConfig.Mounts entry."""
    fields: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        fields[key.strip().lower()] = value if sep else "true"
    kind = fields.pop("type", "volume")
    target = fields.pop("target", "") or fields.pop("destination", "") or fields.pop("dst", "")
    source = fields.pop("source", "") or fields.pop("src", "")
    readonly = (fields.pop("readonly", "") or fields.pop("ro", "")).lower() in ("true", "1")
    if kind not in ("bind", "volume", "tmpfs"):
        raise UsageError(f"invalid --mount {spec!r}: type must be bind, volume or tmpfs")
    if not target:
        raise UsageError(f"invalid --mount {spec!r}: target is required")
    if kind == "bind" and not source:
        raise UsageError(f"invalid --mount {spec!r}: a bind needs a source")
    return {"Type": kind, "Source": source, "Target": target, "ReadOnly": readonly}


def parse_ulimit(spec: str) -> dict[str, Any]:
    name, _, values = spec.partition("=")
    soft, _, hard = values.partition(":")
    try:
        return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}
    except ValueError:
        raise UsageError(f"invalid ulimit {spec!r}: expected NAME=SOFT[:HARD]") from None


def create_body(args: argparse.Namespace,
                environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The JSON body of POST /containers/create for `berth run`/`create` flags."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    binds: list[str] = []
    volumes: dict[str, dict[str, Any]] = {}
    for v in args.volume:
        if ":" in v:
            parts = v.split(":")
            if len(parts) > 3 or not parts[0] or not parts[1].startswith("/"):
                raise UsageError(f"invalid volume {v!r}: expected SRC:/DST[:ro|rw]")
            if len(parts) == 3 and not set(parts[2].split(",")) <= {"ro", "rw", "z", "Z"}:
                raise UsageError(f"invalid volume {v!r}: mode must be ro or rw")
            binds.append(v)
        elif v.startswith("/"):
            volumes[v] = {}
        else:
            raise UsageError(f"invalid volume {v!r}: the container path must be absolute")
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in args.publish:
        key, binding = parse_port(spec)
        exposed[key] = {}
        if binding is not None:
            bindings.setdefault(key, []).append(binding)
    for port in args.expose:
        exposed[port if "/" in port else f"{port}/tcp"] = {}
    host_config: dict[str, Any] = {
        "Binds": binds or None,
        "RestartPolicy": parse_restart(args.restart),
        "AutoRemove": bool(getattr(args, "rm", False)),
        "ReadonlyRootfs": args.read_only,
        "Privileged": args.privileged,
        "PublishAllPorts": args.publish_all,
        "PortBindings": bindings or None,
        "Links": args.link or None,
        "ExtraHosts": args.add_host or None,
        "Dns": args.dns or None,
        "CapAdd": args.cap_add or None,
        "CapDrop": args.cap_drop or None,
        "SecurityOpt": args.security_opt or None,
        "Ulimits": [parse_ulimit(u) for u in args.ulimit] or None,
        "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in args.tmpfs} or None,
        "Mounts": [parse_mount(m) for m in args.mount] or None,
        "UsernsMode": args.userns or None,
    }
    if args.network:
        host_config["NetworkMode"] = args.network
    if args.memory:
        host_config["Memory"] = parse_bytes(args.memory)
    if args.memory_swap:
        host_config["MemorySwap"] = -1 if args.memory_swap == "-1" \
            else parse_bytes(args.memory_swap)
    if args.cpus is not None:
        if args.cpus <= 0:
            raise UsageError(f"invalid --cpus {args.cpus}: must be more than 0")
        host_config["NanoCpus"] = round(args.cpus * 1e9)
    if args.cpu_shares is not None:
        host_config["CpuShares"] = args.cpu_shares
    if args.pids_limit is not None:
        host_config["PidsLimit"] = args.pids_limit
    if args.blkio_weight is not None:
        if not 10 <= args.blkio_weight <= 1000:
            raise UsageError(f"invalid --blkio-weight {args.blkio_weight}: range is 10-1000")
        host_config["BlkioWeight"] = args.blkio_weight
    if args.shm_size:
        host_config["ShmSize"] = parse_bytes(args.shm_size)
    if args.init:
        host_config["Init"] = True
    interactive = args.interactive
    detached = bool(getattr(args, "detach", False))
    body: dict[str, Any] = {
        "Image": args.image,
        "Cmd": command or None,
        "Env": parse_env(args.env, args.env_file, environ) or None,
        "Tty": args.tty,
        "OpenStdin": interactive,
        "StdinOnce": interactive and not detached,
        "AttachStdin": interactive and not detached,
        "AttachStdout": not detached,
        "AttachStderr": not detached,
        "Labels": parse_key_values(read_lines(args.label_file) + args.label, "label"),
        "ExposedPorts": exposed or None,
        "Volumes": volumes or None,
        "HostConfig": {k: v for k, v in host_config.items() if v is not None},
    }
    if args.network_alias or args.ip:
        endpoint: dict[str, Any] = {"Aliases": args.network_alias or None}
        if args.ip:
            endpoint["IPAMConfig"] = {"IPv4Address": args.ip}
        body["NetworkingConfig"] = {"EndpointsConfig": {args.network or "bridge": endpoint}}
    if args.entrypoint is not None:
        body["Entrypoint"] = [args.entrypoint] if args.entrypoint else [""]
    for flag, key in (("workdir", "WorkingDir"), ("user", "User"), ("hostname", "Hostname"),
                      ("domainname", "Domainname"), ("stop_signal", "StopSignal")):
        value = getattr(args, flag)
        if value:
            body[key] = value
    if args.stop_timeout is not None:
        body["StopTimeout"] = args.stop_timeout
    return {k: v for k, v in body.items() if v is not None}
