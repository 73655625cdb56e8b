"""`berth network create|ls|inspect|rm|prune|connect|disconnect` (Docker's verbs).

Written by the networking helper (issue 4); the daemon side is
runtime/api/networks.py on runtime/net.
"""

from __future__ import annotations

import argparse
from typing import Any

from runtime.cli.common import (
    Context,
    add_verb,
    err,
    inspect_each,
    out,
    parse_filters,
    parse_key_values,
    render,
    table,
)
from runtime.client import DaemonError, quote_id


def cmd_create(args: argparse.Namespace, ctx: Context) -> int:
    ipam: dict[str, Any] = {"Driver": "default", "Config": []}
    if args.subnet or args.gateway:
        ipam["Config"] = [{"Subnet": args.subnet or "", "Gateway": args.gateway or ""}]
    body = {"Name": args.name, "Driver": args.driver, "Internal": args.internal, "IPAM": ipam,
            "Options": parse_key_values(args.opt, "option"),
            "Labels": parse_key_values(args.label, "label")}
    out(ctx.client.post("/networks/create", json_body=body)["Id"])
    return 0


def cmd_ls(args: argparse.Namespace, ctx: Context) -> int:
    nets = ctx.client.get("/networks", {"filters": parse_filters(args.filter)})
    if args.quiet:
        for n in nets:
            out(n["Id"] if args.no_trunc else n["Id"][:12])
    elif args.format:
        for n in nets:
            out(render(args.format, n))
    else:
        out(table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                  [[n["Id"] if args.no_trunc else n["Id"][:12], n["Name"], n["Driver"],
                    n.get("Scope", "local")] for n in nets]))
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: Context) -> int:
    return inspect_each(ctx, "/networks/{}", args.networks, args.format)


def cmd_rm(args: argparse.Namespace, ctx: Context) -> int:
    status = 0
    for name in args.networks:
        try:
            ctx.client.call("DELETE", f"/networks/{quote_id(name)}").read()
            out(name)
        except DaemonError as e:
            err(str(e))
            status = 1
    return status


def cmd_prune(args: argparse.Namespace, ctx: Context) -> int:
    if not args.force:
        answer = input("WARNING! This will remove all custom networks not used by at least one "
                       "container.\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    result = ctx.client.post("/networks/prune", {"filters": parse_filters(args.filter)})
    deleted = result.get("NetworksDeleted") or []
    if deleted:
        out("Deleted Networks:")
        for name in deleted:
            out(name)
    return 0


def cmd_connect(args: argparse.Namespace, ctx: Context) -> int:
    endpoint: dict[str, Any] = {"Aliases": args.alias or None}
    if args.ip:
        endpoint["IPAMConfig"] = {"IPv4Address": args.ip}
    ctx.client.post(f"/networks/{quote_id(args.network)}/connect",
                    json_body={"Container": args.container, "EndpointConfig": endpoint})
    return 0


def cmd_disconnect(args: argparse.Namespace, ctx: Context) -> int:
    ctx.client.post(f"/networks/{quote_id(args.network)}/disconnect",
                    json_body={"Container": args.container, "Force": args.force})
    return 0


def register(sub: Any) -> None:
    group = sub.add_parser("network", help="Manage networks", description="Manage networks")
    inner = group.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    p = add_verb(inner, "create", cmd_create, "Create a bridge network")
    p.add_argument("-d", "--driver", default="bridge", help="only 'bridge'")
    p.add_argument("--subnet", help="IPv4 CIDR, e.g. 10.90.0.0/24 (default: a free /16)")
    p.add_argument("--gateway", help="gateway address (default: the subnet's first)")
    p.add_argument("--internal", action="store_true", help="no way in or out of the host")
    p.add_argument("-o", "--opt", action="append", default=[], help="driver option key=value")
    p.add_argument("--label", action="append", default=[], help="key=value")
    p.add_argument("name", metavar="NETWORK")
    p = add_verb(inner, "ls", cmd_ls, "List networks", aliases=("list",))
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="full ids")
    p.add_argument("-f", "--filter", action="append", default=[], help="key=value")
    p.add_argument("--format", help="Go-template subset")
    p = add_verb(inner, "inspect", cmd_inspect, "Show networks as JSON")
    p.add_argument("-f", "--format", help="Go-template subset")
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p = add_verb(inner, "rm", cmd_rm, "Remove networks", aliases=("remove",))
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p = add_verb(inner, "prune", cmd_prune, "Remove networks no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], help="key=value")
    p = add_verb(inner, "connect", cmd_connect, "Connect a running container to a network")
    p.add_argument("--alias", action="append", default=[], help="a name on this network")
    p.add_argument("--ip", help="IPv4 address on this network")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    p = add_verb(inner, "disconnect", cmd_disconnect, "Disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true", help="force")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
