"""`hostos`: one argparse tree; each verb's module registers its own parser.

A command module exposes `register(subparsers)` which adds its parser and
sets `func` to a callable taking the parsed namespace and returning an exit
status. Expected failures raise `hostos.errors.HostosError`, printed without
a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hostos import __version__
from hostos.errors import HostosError

# Modules that contribute verbs, in --help order.
COMMAND_MODULES: list[str] = [
    "hostos.fleetlock.server",
    "hostos.fleet",
    "hostos.provision",
    "hostos.vm",
    "hostos.build",
    "hostos.keys",
    "hostos.release",
    "hostos.update.cli",
    "hostos.health",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostos",
        description="Build, boot, release and update the Berth host OS.",
    )
    parser.add_argument("--version", action="version", version=f"hostos {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    try:
        status: int = args.func(args)
    except HostosError as e:
        print(f"hostos: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status
