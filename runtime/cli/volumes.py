"""`berth volume create|ls|inspect|rm|prune`."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.cli.common import (
    Context,
    add_verb,
    err,
    human_size,
    inspect_each,
    out,
    parse_filters,
    parse_key_values,
    render,
    table,
)
from runtime.client import DaemonError, quote_id


def cmd_create(args: argparse.Namespace, ctx: Context) -> int:
    body = {"Name": args.name or args.name_flag or "", "Driver": args.driver,
            "DriverOpts": parse_key_values(args.opt, "option"),
            "Labels": parse_key_values(args.label, "label")}
    out(ctx.client.post("/volumes/create", json_body=body)["Name"])
    return 0


def cmd_ls(args: argparse.Namespace, ctx: Context) -> int:
    result = ctx.client.get("/volumes", {"filters": parse_filters(args.filter)})
    volumes = result.get("Volumes") or []
    for warning in result.get("Warnings") or []:
        err(f"WARNING: {warning}")
    if args.quiet:
        for v in volumes:
            out(v["Name"])
    elif args.format:
        for v in volumes:
            out(render(args.format, v))
    else:
        out(table(["DRIVER", "VOLUME NAME"], [[v.get("Driver", "local"), v["Name"]]
                                              for v in volumes]))
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: Context) -> int:
    return inspect_each(ctx, "/volumes/{}", args.volumes, args.format)


def cmd_rm(args: argparse.Namespace, ctx: Context) -> int:
    status = 0
    for name in args.volumes:
        try:
            ctx.client.call("DELETE", f"/volumes/{quote_id(name)}", {"force": args.force}).read()
            out(name)
        except DaemonError as e:
            err(str(e))
            status = 1
    return status


def cmd_prune(args: argparse.Namespace, ctx: Context) -> int:
    if not args.force:
        answer = input("WARNING! This will remove anonymous local volumes not used by at least "
                       "one container.\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    filters = list(args.filter) + (["all=true"] if args.all else [])
    result = ctx.client.post("/volumes/prune", {"filters": parse_filters(filters)})
    deleted = result.get("VolumesDeleted") or []
    if deleted:
        out("Deleted Volumes:")
        for name in deleted:
            out(name)
        out()
    out(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed', 0))}")
    return 0


def register(sub: Any) -> None:
    group = sub.add_parser("volume", help="Manage volumes", description="Manage volumes")
    inner = group.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    p = add_verb(inner, "create", cmd_create, "Create a named volume")
    p.add_argument("--name", dest="name_flag", help="volume name")
    p.add_argument("-d", "--driver", default="local", help="only 'local'")
    p.add_argument("-o", "--opt", action="append", default=[], help="driver option key=value")
    p.add_argument("--label", action="append", default=[], help="key=value")
    p.add_argument("name", nargs="?", metavar="VOLUME")
    p = add_verb(inner, "ls", cmd_ls, "List volumes", aliases=("list",))
    p.add_argument("-q", "--quiet", action="store_true", help="only names")
    p.add_argument("-f", "--filter", action="append", default=[], help="key=value")
    p.add_argument("--format", help="Go-template subset")
    p = add_verb(inner, "inspect", cmd_inspect, "Show volumes as JSON")
    p.add_argument("-f", "--format", help="Go-template subset")
    p.add_argument("volumes", nargs="+", metavar="VOLUME")
    p = add_verb(inner, "rm", cmd_rm, "Remove volumes", aliases=("remove",))
    p.add_argument("-f", "--force", action="store_true", help="ignore missing volumes")
    p.add_argument("volumes", nargs="+", metavar="VOLUME")
    p = add_verb(inner, "prune", cmd_prune, "Remove unused volumes")
    p.add_argument("-a", "--all", action="store_true", help="named volumes too")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], help="key=value")
