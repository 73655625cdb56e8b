"""System verbs: info, version, events, system df."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from runtime import __version__
from runtime.cli.common import (
    Context,
    add_verb,
    human_size,
    out,
    parse_filters,
    parse_time,
    render,
    table,
)
from runtime.client import API_VERSION, ClientError


def cmd_version(args: argparse.Namespace, ctx: Context) -> int:
    import platform

    client = {"Version": __version__, "ApiVersion": API_VERSION, "Os": "linux",
              "Arch": platform.machine(), "Python": platform.python_version()}
    try:
        server: dict[str, Any] | None = ctx.client.get("/version")
        server_error = ""
    except ClientError as e:
        server, server_error = None, str(e)
    if args.format:
        out(render(args.format, {"Client": client, "Server": server}))
    else:
        out("Client: Berth")
        out(f" Version:      {__version__}\n API version:  {API_VERSION}\n"
            f" Python:       {client['Python']}\n OS/Arch:      linux/{client['Arch']}")
        if server is not None:
            name = (server.get("Platform") or {}).get("Name", "")
            out(f"\nServer: {name}")
            out(f" Version:      {server.get('Version')}\n"
                f" API version:  {server.get('ApiVersion')} "
                f"(minimum version {server.get('MinAPIVersion')})\n"
                f" OS/Arch:      {server.get('Os')}/{server.get('Arch')}\n"
                f" Kernel:       {server.get('KernelVersion')}")
    if server is None:
        raise ClientError(server_error)
    return 0


def cmd_info(args: argparse.Namespace, ctx: Context) -> int:
    info = ctx.client.get("/info")
    if args.format:
        out(render(args.format, info))
        return 0
    lines = [
        f"Containers: {info.get('Containers', 0)}",
        f" Running: {info.get('ContainersRunning', 0)}",
        f" Paused: {info.get('ContainersPaused', 0)}",
        f" Stopped: {info.get('ContainersStopped', 0)}",
        f"Images: {info.get('Images', 0)}",
        f"Server Version: {info.get('ServerVersion')}",
        f"Storage Driver: {info.get('Driver')}",
        f"Logging Driver: {info.get('LoggingDriver')}",
        f"Cgroup Driver: {info.get('CgroupDriver')}",
        f"Cgroup Version: {info.get('CgroupVersion')}",
        f"Kernel Version: {info.get('KernelVersion')}",
        f"Operating System: {info.get('OperatingSystem')}",
        f"Architecture: {info.get('Architecture')}",
        f"CPUs: {info.get('NCPU')}",
        f"Total Memory: {human_size(info.get('MemTotal', 0))}",
        f"Name: {info.get('Name')}",
        f"ID: {info.get('ID')}",
        f"Docker Root Dir: {info.get('DockerRootDir')}",
    ]
    out("Server:\n" + "\n".join(" " + line for line in lines))
    for warning in info.get("Warnings") or []:
        out(f"WARNING: {warning}")
    return 0


def format_event(e: dict[str, Any]) -> str:
    nanos = int(e.get("timeNano") or int(e.get("time", 0)) * 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(nanos // 1_000_000_000, dt.UTC)
    when = stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 1_000_000_000:09d}Z"
    actor = e.get("Actor") or {}
    attrs = ", ".join(f"{k}={v}" for k, v in sorted((actor.get("Attributes") or {}).items()))
    return f"{when} {e.get('Type')} {e.get('Action')} {actor.get('ID', '')}" + \
        (f" ({attrs})" if attrs else "")


def cmd_events(args: argparse.Namespace, ctx: Context) -> int:
    params = {"since": parse_time(args.since) if args.since else None,
              "until": parse_time(args.until) if args.until else None,
              "filters": parse_filters(args.filter)}
    response = ctx.client.call("GET", "/events", params)
    try:
        for event in response.json_lines():
            out(render(args.format, event) if args.format else format_event(event))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_df(args: argparse.Namespace, ctx: Context) -> int:
    df = ctx.client.get("/system/df")
    images = df.get("Images") or []
    containers = df.get("Containers") or []
    volumes = df.get("Volumes") or []
    image_size = sum(i.get("Size", 0) for i in images)
    unused_images = sum(i.get("Size", 0) for i in images if not i.get("Containers"))
    rw_size = sum(c.get("SizeRw", 0) or 0 for c in containers)
    stopped_rw = sum(c.get("SizeRw", 0) or 0 for c in containers if c.get("State") != "running")
    vol_size = sum((v.get("UsageData") or {}).get("Size", 0) for v in volumes)
    unused_vols = sum((v.get("UsageData") or {}).get("Size", 0) for v in volumes
                      if not (v.get("UsageData") or {}).get("RefCount"))
    out(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], [
        ["Images", str(len(images)), str(sum(1 for i in images if i.get("Containers"))),
         human_size(image_size), human_size(unused_images)],
        ["Containers", str(len(containers)),
         str(sum(1 for c in containers if c.get("State") == "running")),
         human_size(rw_size), human_size(stopped_rw)],
        ["Local Volumes", str(len(volumes)),
         str(sum(1 for v in volumes if (v.get("UsageData") or {}).get("RefCount"))),
         human_size(vol_size), human_size(unused_vols)],
    ]))
    return 0


def _events_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="timestamp, RFC 3339 date or duration ago (10m)")
    p.add_argument("--until", help="timestamp, RFC 3339 date or duration ago (10m)")
    p.add_argument("-f", "--filter", action="append", default=[],
                   help="type=, event=, container=, image=, label=")
    p.add_argument("--format", help="Go-template subset or json")


def register(sub: Any) -> None:
    add_verb(sub, "version", cmd_version, "Show client and daemon versions").add_argument(
        "-f", "--format", help="Go-template subset, e.g. '{{.Server.Version}}'")
    add_verb(sub, "info", cmd_info, "Show system-wide information").add_argument(
        "-f", "--format", help="Go-template subset")
    _events_flags(add_verb(sub, "events", cmd_events, "Stream the daemon's events"))


def register_group(sub: Any) -> None:
    group = sub.add_parser("system", help="Manage the daemon", description="Manage the daemon")
    inner = group.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    add_verb(inner, "df", cmd_df, "Show disk usage")
    add_verb(inner, "info", cmd_info, "Show system-wide information").add_argument(
        "-f", "--format", help="Go-template subset")
    _events_flags(add_verb(inner, "events", cmd_events, "Stream the daemon's events"))
