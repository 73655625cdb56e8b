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

# The verb each module registers. On the host OS, units run `hostos provision`,
# `hostos health` and `hostos update` early in boot: importing only that verb's
# module keeps them fast and independent of build-machine-only libraries
# (hostos.vm needs qemu.qmp, which the image does not ship).
VERB_MODULES: dict[str, str] = {
    "fleetlock": "hostos.fleetlock.server",
    "fleet": "hostos.fleet",
    "provision": "hostos.provision",
    "qemu": "hostos.vm",
    "build": "hostos.build",
    "keys": "hostos.keys",
    "release": "hostos.release",
    "update": "hostos.update.cli",
    "health": "hostos.health",
}


def _modules_for(argv: list[str]) -> list[str]:
    """Only the named verb's module when argv names one, else all (for --help)."""
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is not None and verb in VERB_MODULES:
        return [VERB_MODULES[verb]]
    return COMMAND_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostos",
        description="Build, boot, release and update the Berth host OS.",
    )
    parser.add_argument("--version", action="version", version=f"hostos {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = COMMAND_MODULES if argv is None else _modules_for(argv)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
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
