"""Container verbs that do not attach: ps, stop, kill, rm, logs, inspect, top, stats..."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from runtime.cli import streams
from runtime.cli.common import (
    Context,
    add_verb,
    ago,
    binary_size,
    err,
    out,
    parse_filters,
    parse_time,
    print_json,
    render,
    table,
)
from runtime.client import DaemonError, quote_id


def _path(container: str) -> str:
    return f"/containers/{quote_id(container)}"


def each(containers: list[str], action: Callable[[str], object], echo: bool = True) -> int:
    """Apply `action` to each container; report failures per container like docker."""
    status = 0
    for c in containers:
        try:
            action(c)
            if echo:
                out(c)
        except DaemonError as e:
            err(str(e))
            status = 1
    return status


def format_ports(ports: list[dict[str, Any]]) -> str:
    shown = []
    for p in ports or []:
        target = f"{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
        if p.get("PublicPort"):
            shown.append(f"{p.get('IP') or '0.0.0.0'}:{p['PublicPort']}->{target}")
        else:
            shown.append(target)
    return ", ".join(shown)


def format_command(command: str, no_trunc: bool) -> str:
    if not no_trunc and len(command) > 20:
        command = command[:19] + "…"
    return f'"{command}"'


def ps_fields(c: dict[str, Any], no_trunc: bool) -> dict[str, Any]:
    """The names `docker ps --format` templates use, over one /containers/json entry."""
    labels = c.get("Labels") or {}
    return {**c,
            "ID": c["Id"] if no_trunc else c["Id"][:12],
            "Command": format_command(c.get("Command", ""), no_trunc),
            "CreatedAt": str(c.get("Created", "")), "RunningFor": ago(c.get("Created", 0)),
            "Ports": format_ports(c.get("Ports", [])),
            "Names": ",".join(n.lstrip("/") for n in c.get("Names", [])),
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "Networks": ",".join((c.get("NetworkSettings") or {}).get("Networks") or {}),
            "Mounts": ",".join(m.get("Name") or m.get("Source", "")
                               for m in c.get("Mounts") or [])}


def cmd_ps(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, Any] = {"all": args.all or args.latest or bool(args.last),
                              "filters": parse_filters(args.filter), "size": args.size}
    if args.last:
        params["limit"] = args.last
    if args.latest:
        params["limit"] = 1
    rows = ctx.client.get("/containers/json", params)
    if args.quiet:
        for c in rows:
            out(c["Id"] if args.no_trunc else c["Id"][:12])
        return 0
    if args.format:
        for c in rows:
            out(render(args.format, ps_fields(c, args.no_trunc)))
        return 0
    out(table(
        ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
        [[c["Id"] if args.no_trunc else c["Id"][:12], c.get("Image", ""),
          format_command(c.get("Command", ""), args.no_trunc), ago(c.get("Created", 0)),
          c.get("Status", ""), format_ports(c.get("Ports", [])),
          ",".join(n.lstrip("/") for n in c.get("Names", []))] for c in rows]))
    return 0


def cmd_stop(args: argparse.Namespace, ctx: Context) -> int:
    params = {"t": args.time, "signal": args.signal}
    return each(args.containers, lambda c: ctx.client.call(
        "POST", f"{_path(c)}/stop", params, ok=(304,)).read())


def cmd_restart(args: argparse.Namespace, ctx: Context) -> int:
    params = {"t": args.time, "signal": args.signal}
    return each(args.containers,
                lambda c: ctx.client.call("POST", f"{_path(c)}/restart", params).read())


def cmd_kill(args: argparse.Namespace, ctx: Context) -> int:
    return each(args.containers, lambda c: ctx.client.call(
        "POST", f"{_path(c)}/kill", {"signal": args.signal}).read())


def cmd_rm(args: argparse.Namespace, ctx: Context) -> int:
    params = {"force": args.force, "v": args.volumes}
    return each(args.containers,
                lambda c: ctx.client.call("DELETE", _path(c), params).read())


def cmd_pause(args: argparse.Namespace, ctx: Context) -> int:
    return each(args.containers,
                lambda c: ctx.client.call("POST", f"{_path(c)}/pause").read())


def cmd_unpause(args: argparse.Namespace, ctx: Context) -> int:
    return each(args.containers,
                lambda c: ctx.client.call("POST", f"{_path(c)}/unpause").read())


def cmd_wait(args: argparse.Namespace, ctx: Context) -> int:
    def wait(c: str) -> None:
        out(str(ctx.client.post(f"{_path(c)}/wait")["StatusCode"]))

    return each(args.containers, wait, echo=False)


def cmd_rename(args: argparse.Namespace, ctx: Context) -> int:
    ctx.client.call("POST", f"{_path(args.container)}/rename", {"name": args.new_name}).read()
    return 0


def cmd_logs(args: argparse.Namespace, ctx: Context) -> int:
    info = ctx.client.get(f"{_path(args.container)}/json")
    params = {"stdout": 1, "stderr": 1, "follow": args.follow, "timestamps": args.timestamps,
              "tail": args.tail,
              "since": parse_time(args.since) if args.since else None,
              "until": parse_time(args.until) if args.until else None}
    response = ctx.client.call("GET", f"{_path(args.container)}/logs", params)
    try:
        if info.get("Config", {}).get("Tty"):
            for chunk in response.chunks():
                streams.write_out(streams.STDOUT, chunk)
        else:
            for stream, payload in streams.frames_from_chunks(response.chunks()):
                streams.write_out(stream, payload)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: Context) -> int:
    if args.provenance:
        from runtime.cli.build import cmd_inspect_provenance

        args.images = args.names
        return cmd_inspect_provenance(args, ctx)
    kinds = [args.type] if args.type else ["container", "image", "volume"]
    paths = {"container": "/containers/{}/json", "image": "/images/{}/json",
             "volume": "/volumes/{}"}
    found: list[Any] = []
    status = 0
    for name in args.names:
        for kind in kinds:
            try:
                params = {"size": 1} if args.size and kind == "container" else None
                found.append(ctx.client.get(paths[kind].format(quote_id(name)), params))
                break
            except DaemonError as e:
                if e.status != 404:
                    raise
        else:
            err(f"Error: No such object: {name}")
            status = 1
    if args.format:
        for obj in found:
            out(render(args.format, obj))
    else:
        print_json(found)
    return status


def cmd_top(args: argparse.Namespace, ctx: Context) -> int:
    params = {"ps_args": " ".join(args.ps_args)} if args.ps_args else None
    result = ctx.client.get(f"{_path(args.container)}/top", params)
    out(table(result["Titles"], result["Processes"]))
    return 0


def cpu_percent(s: dict[str, Any]) -> float:
    cpu, pre = s.get("cpu_stats", {}), s.get("precpu_stats", {})
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - \
        pre.get("cpu_usage", {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or 1
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return float(cpu_delta) / float(system_delta) * float(online) * 100.0


def stats_row(s: dict[str, Any], no_trunc: bool) -> list[str]:
    mem = s.get("memory_stats", {})
    usage = mem.get("usage", 0) - mem.get("stats", {}).get("inactive_file", 0)
    limit = mem.get("limit", 0)
    rx = sum(n.get("rx_bytes", 0) for n in (s.get("networks") or {}).values())
    tx = sum(n.get("tx_bytes", 0) for n in (s.get("networks") or {}).values())
    io = s.get("blkio_stats", {}).get("io_service_bytes_recursive") or []
    read = sum(e.get("value", 0) for e in io if e.get("op", "").lower() == "read")
    write = sum(e.get("value", 0) for e in io if e.get("op", "").lower() == "write")
    return [s["id"] if no_trunc else s["id"][:12], s.get("name", "").lstrip("/"),
            f"{cpu_percent(s):.2f}%",
            f"{binary_size(usage)} / {binary_size(limit)}",
            f"{(usage / limit * 100) if limit else 0:.2f}%",
            f"{binary_size(rx)} / {binary_size(tx)}",
            f"{binary_size(read)} / {binary_size(write)}",
            str(s.get("pids_stats", {}).get("current", 0))]


STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
                 "BLOCK I/O", "PIDS"]


def cmd_stats(args: argparse.Namespace, ctx: Context) -> int:
    names = args.containers or [c["Id"] for c in ctx.client.get("/containers/json")]
    while True:
        rows = []
        for c in names:
            try:
                rows.append(stats_row(ctx.client.get(f"{_path(c)}/stats", {"stream": 0}),
                                      args.no_trunc))
            except DaemonError as e:
                err(str(e))
                return 1
        text = table(STATS_HEADERS, rows)
        if args.no_stream:
            out(text)
            return 0
        sys.stdout.write("\033[2J\033[H" + text + "\n")
        sys.stdout.flush()
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            return 0


def cmd_prune(args: argparse.Namespace, ctx: Context) -> int:
    if not args.force:
        answer = input("WARNING! This will remove all stopped containers.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    result = ctx.client.post("/containers/prune", {"filters": parse_filters(args.filter)})
    deleted = result.get("ContainersDeleted") or []
    if deleted:
        out("Deleted Containers:")
        for cid in deleted:
            out(cid)
        out()
    out(f"Total reclaimed space: {result.get('SpaceReclaimed', 0)}B")
    return 0


def cmd_port(args: argparse.Namespace, ctx: Context) -> int:
    info = ctx.client.get(f"{_path(args.container)}/json")
    for port, bindings in sorted((info.get("NetworkSettings", {}).get("Ports") or {}).items()):
        for b in bindings or []:
            out(f"{port} -> {b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}")
    return 0


def _containers(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _stop_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", dest="time", type=int,
                   help="seconds to wait before killing (default: the container's)")
    p.add_argument("-s", "--signal", help="signal to send instead of the stop signal")
    _containers(p)


def _ps_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show stopped containers too")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("-f", "--filter", action="append", default=[], help="key=value")
    p.add_argument("-n", "--last", type=int, default=0, help="show the N newest")
    p.add_argument("-l", "--latest", action="store_true", help="show the newest")
    p.add_argument("-s", "--size", action="store_true", help="show sizes")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate")
    p.add_argument("--format", help="Go-template subset, e.g. '{{.Names}}' or json")


def register(sub: Any) -> None:
    _ps_flags(add_verb(sub, "ps", cmd_ps, "List containers"))
    _stop_flags(add_verb(sub, "stop", cmd_stop, "Stop running containers"))
    _stop_flags(add_verb(sub, "restart", cmd_restart, "Restart containers"))
    p = add_verb(sub, "kill", cmd_kill, "Kill running containers")
    p.add_argument("-s", "--signal", default="KILL", help="signal (default KILL)")
    _containers(p)
    p = add_verb(sub, "rm", cmd_rm, "Remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running one first")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes")
    _containers(p)
    _containers(add_verb(sub, "pause", cmd_pause, "Freeze every process of containers"))
    _containers(add_verb(sub, "unpause", cmd_unpause, "Thaw paused containers"))
    _containers(add_verb(sub, "wait", cmd_wait, "Wait for containers to stop; print codes"))
    p = add_verb(sub, "rename", cmd_rename, "Rename a container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("new_name", metavar="NEW_NAME")
    p = add_verb(sub, "logs", cmd_logs, "Show a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="keep following")
    p.add_argument("--since", help="timestamp, RFC 3339 date or duration ago (10m)")
    p.add_argument("--until", help="timestamp, RFC 3339 date or duration ago (10m)")
    p.add_argument("-n", "--tail", default="all", help="lines from the end (default all)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("--details", action="store_true", help="accepted for compatibility")
    p.add_argument("container", metavar="CONTAINER")
    p = add_verb(sub, "inspect", cmd_inspect, "Low-level information on objects as JSON")
    p.add_argument("-f", "--format", help="Go-template subset, e.g. '{{.State.Status}}'")
    p.add_argument("--type", choices=("container", "image", "volume"), help="object kind")
    p.add_argument("-s", "--size", action="store_true",
                   help="a container's SizeRw and SizeRootFs")
    p.add_argument("--provenance", action="store_true",
                   help="an image's build provenance: the local record, or with --key the "
                        "attestations in its registry that verify")
    p.add_argument("--key", action="append", default=[],
                   help="public key for --provenance (repeatable)")
    p.add_argument("--allow-insecure-registry", action="store_true",
                   help="talk plain HTTP to the registry (--provenance --key)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = add_verb(sub, "top", cmd_top, "Show a container's processes")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS_OPTIONS")
    p = add_verb(sub, "stats", cmd_stats, "Live resource usage of containers")
    p.add_argument("--no-stream", action="store_true", help="print once and exit")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate")
    p.add_argument("-a", "--all", action="store_true", help="accepted for compatibility")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")
    p = add_verb(sub, "port", cmd_port, "List a container's published ports")
    p.add_argument("container", metavar="CONTAINER")


def register_group_verbs(sub: Any) -> None:
    """`berth container ls|prune`: the spellings only the management group has."""
    _ps_flags(add_verb(sub, "ls", cmd_ps, "List containers", aliases=("list",)))
    p = add_verb(sub, "prune", cmd_prune, "Remove all stopped containers")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], help="key=value")
