"""`berth`: a thin client of berthd's Docker-compatible API (see README.md).

Each verb parses its flags and makes one or a few API calls; nothing here
touches containers directly. Expected failures (the daemon's errors, bad
flags, no daemon) print one line and exit non-zero, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from runtime import __version__
from runtime.cli.common import Context
from runtime.client import ClientError, TlsConfig

# Client-side verbs of runtime/sign (they talk to registries, not to berthd). Their
# module pulls in cryptography and aiohttp, so it is imported only when asked for.
SIGN_VERBS = ("generate-key-pair", "sign", "verify", "login", "logout")
_GLOBAL_WITH_VALUE = ("-H", "--host", "--tlscacert", "--tlscert", "--tlskey")
# The module (under runtime.cli) whose register() adds each top-level verb: a run of
# `berth VERB` imports only that one (importing all of them is ~10 ms of every start).
# tests/unit/test_cli.py checks this table against what the modules register.
VERB_MODULES: dict[str, str] = {
    **dict.fromkeys(("run", "create", "start", "attach", "exec"), "run"),
    **dict.fromkeys(("ps", "stop", "restart", "kill", "rm", "pause", "unpause", "wait",
                     "rename", "logs", "inspect", "top", "stats", "port"), "containers"),
    **dict.fromkeys(("images", "rmi", "pull", "push", "load", "import", "save", "history", "tag"),
                    "images"),
    **dict.fromkeys(("version", "info", "events"), "system"),
    "volume": "volumes", "network": "networks", "build": "build", "attest": "build",
}


def first_verb(argv: Sequence[str]) -> str | None:
    """The verb argv names (skipping global options), or None (none, or --help first)."""
    args = iter(argv)
    for word in args:
        if word in _GLOBAL_WITH_VALUE:
            next(args, None)
        elif word in ("-h", "--help"):
            return None
        elif not word.startswith("-"):
            return word
    return None


def wants_sign_verbs(argv: Sequence[str]) -> bool:
    """True if argv names a sign verb, or asks for the full help (`berth --help`)."""
    verb = first_verb(argv)
    return verb in SIGN_VERBS or (verb is None and any(w in ("-h", "--help") for w in argv))


class _Unused:
    """Stands in for the parser of a verb this run does not use (argparse is slow to
    build 80 of them: each one looks up its message translations on disk)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_defaults(self, **kwargs: Any) -> None:
        return None

    def add_subparsers(self, **kwargs: Any) -> _OnlyVerb:
        return _OnlyVerb(None, "")


class _OnlyVerb:
    """A subparsers action that builds only `verb`'s parser (all of them for None)."""

    def __init__(self, real: Any, verb: str | None) -> None:
        self.real = real
        self.verb = verb
        self.built = False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self.real is None or (self.verb is not None and self.verb != name
                                 and self.verb not in kwargs.get("aliases", ())):
            return _Unused()
        self.built = True
        return self.real.add_parser(name, **kwargs)


def build_parser(with_sign_verbs: bool = True, verb: str | None = None
                 ) -> argparse.ArgumentParser:
    """The full parser, or (given `verb`) one with only that verb's subparser."""
    parser = _global_parser()
    real = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub: Any = _OnlyVerb(real, verb)
    if verb in VERB_MODULES and verb not in SIGN_VERBS:
        importlib.import_module(f"runtime.cli.{VERB_MODULES[verb]}").register(sub)
        if sub.built:
            return parser
    from runtime.cli import build, containers, images, networks, run, system, volumes

    run.register(sub)
    containers.register(sub)
    images.register(sub)
    system.register(sub)
    volumes.register(sub)
    networks.register(sub)
    build.register(sub)
    group = sub.add_parser("container", help="Manage containers",
                           description="Manage containers")
    inner = group.add_subparsers(dest="container_command", metavar="COMMAND", required=True)
    run.register(inner)
    containers.register(inner)
    containers.register_group_verbs(inner)
    images.register_group(sub)
    system.register_group(sub)
    if with_sign_verbs:
        from runtime.sign import cli as sign_cli

        sign_cli.register(sub)
    if verb is not None and not sub.built:
        return build_parser(with_sign_verbs)  # not a verb we know: argparse says so
    return parser


def _global_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth", description="Run and manage containers on a Berth daemon.")
    parser.add_argument("-v", "--version", action="version", version=f"berth {__version__}")
    parser.add_argument("-H", "--host", help="daemon socket: unix://PATH or tcp://HOST:PORT "
                        "(default: $BERTH_HOST, $DOCKER_HOST, unix:///run/berth/berthd.sock)")
    parser.add_argument("--tls", action="store_true", help="use TLS (implied by --tlsverify)")
    parser.add_argument("--tlsverify", action="store_true", help="use TLS and verify the daemon")
    parser.add_argument("--tlscacert", help="trust certs signed only by this CA")
    parser.add_argument("--tlscert", help="client certificate")
    parser.add_argument("--tlskey", help="client key")
    parser.add_argument("-D", "--debug", action="store_true", help="show tracebacks")
    return parser


def tls_from_args(args: argparse.Namespace,
                  env: Mapping[str, str] = os.environ) -> TlsConfig | None:
    """--tls/--tlsverify and the files; missing ones come from $DOCKER_CERT_PATH or
    ~/.docker (ca.pem, cert.pem, key.pem), as the docker CLI finds them."""
    if not (args.tls or args.tlsverify or args.tlscacert or args.tlscert or args.tlskey):
        return None
    cert_dir = env.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")

    def pick(given: str | None, name: str) -> str | None:
        default = os.path.join(cert_dir, name)
        return given or (default if os.path.exists(default) else None)

    return TlsConfig(pick(args.tlscacert, "ca.pem"), pick(args.tlscert, "cert.pem"),
                     pick(args.tlskey, "key.pem"),
                     verify=args.tlsverify or bool(args.tlscacert))


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_sign_verbs=wants_sign_verbs(words), verb=first_verb(words))
    args = parser.parse_args(words)
    ctx = Context(host=args.host, tls=tls_from_args(args))
    try:
        status: int = args.func(args, ctx)
    except ClientError as e:
        if args.debug:
            raise
        print(str(e) if str(e).startswith("Error") else f"berth: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    except (OSError, ValueError) as e:
        # The connection dropped mid-stream, or the daemon sent something unreadable.
        if args.debug:
            raise
        print(f"berth: {e.strerror if isinstance(e, OSError) and e.strerror else e}",
              file=sys.stderr)
        return 1
    finally:
        ctx.close()
    return status
