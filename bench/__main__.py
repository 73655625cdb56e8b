"""`python -m bench [NAME [options]]`: run one benchmark, or all of them.

Each benchmark module in BENCHMARKS exposes `DESCRIPTION`,
`add_arguments(parser)` and `main(args) -> int`, and prints its own table.
Add yours by appending its module name below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

BENCHMARKS: list[str] = [
    "bench.api_start",
    "bench.boot",
    "bench.build",
    "bench.density",
    "bench.start",
    "bench.fleet",
    "bench.net",
    "bench.registry",
    "bench.update",
    "bench.update_vm",
]


def _modules() -> dict[str, ModuleType]:
    return {name.rpartition(".")[2]: importlib.import_module(name) for name in BENCHMARKS}


def main(argv: list[str] | None = None) -> int:
    modules = _modules()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="bench", metavar="NAME")
    for name, module in modules.items():
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    if args.bench:
        status: int = modules[args.bench].main(args)
        return status
    # No name: every benchmark with its defaults.
    worst = 0
    for name, module in modules.items():
        print(f"== {name}: {module.DESCRIPTION}", flush=True)
        defaults = sub.choices[name].parse_args([])
        defaults.verbose = args.verbose
        worst = max(worst, module.main(defaults))
    return worst


if __name__ == "__main__":
    sys.exit(main())
