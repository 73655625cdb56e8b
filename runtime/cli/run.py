"""`berth run`, `create`, `start`, `attach`, `exec`: verbs that attach streams.

`run` follows the docker CLI's order so that no output is lost and no exit
is missed: create -> attach (hijacked stream) -> wait (headers received, so
the daemon has registered it) -> start -> copy streams -> read the exit
status from the wait.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from runtime.cli import streams
from runtime.cli.common import Context, UsageError, add_verb, out
from runtime.cli.runargs import add_run_flags, create_body
from runtime.client import Client, DaemonError, Response, quote_id

# The docker CLI's exit status when the daemon refused to create or start.
RUN_FAILED = 125


def start_failed_status(message: str) -> int:
    """The docker CLI's status for a start the daemon refused (runStartContainerErr):
    127 for a command not found, 126 for one that cannot be run, else 125."""
    if any(s in message for s in ("executable file not found", "no such file or directory")):
        return 127
    if any(s in message for s in ("permission denied", "is a directory")):
        return 126
    return RUN_FAILED


class StartFailed(Exception):
    def __init__(self, error: DaemonError) -> None:
        super().__init__(str(error))
        self.status = start_failed_status(str(error))


def start_container(client: Client, path: str) -> None:
    try:
        client.post(f"{path}/start")
    except DaemonError as e:
        raise StartFailed(e) from None


def pull_image(client: Client, image: str) -> None:
    """Pull through the daemon, quietly; a failure raises DaemonError with its message."""
    from runtime.cli.images import print_progress, split_ref

    repo, tag = split_ref(image) if "@" not in image else (image, "")
    print_progress(client.call("POST", "/images/create",
                               {"fromImage": repo, "tag": tag or None}), quiet=True)


def create_container(client: Client, body: dict[str, Any], name: str | None,
                     pull: str = "missing") -> str:
    """POST /containers/create; with --pull missing (Docker's default) a missing
    image is pulled first, with --pull always it is pulled in any case."""
    if pull == "always":
        pull_image(client, body["Image"])
    try:
        created = client.post("/containers/create", {"name": name}, body)
    except DaemonError as e:
        if e.status != 404 or "image" not in e.message.lower() or pull == "never":
            raise
        streams.write_out(streams.STDERR,
                          f"Unable to find image '{body['Image']}' locally\n".encode())
        pull_image(client, body["Image"])
        created = client.post("/containers/create", {"name": name}, body)
    for warning in created.get("Warnings") or []:
        streams.write_out(streams.STDERR, f"WARNING: {warning}\n".encode())
    return str(created["Id"])


def attach_and_wait(ctx: Context, cid: str, *, tty: bool, stdin: bool,
                    condition: str, start: bool) -> int:
    client = ctx.client
    path = f"/containers/{quote_id(cid)}"
    conn = client.hijack("POST", f"{path}/attach",
                         {"stream": 1, "stdin": int(stdin), "stdout": 1, "stderr": 1})
    waiter = ctx.new_client()
    wait: Response = waiter.call("POST", f"{path}/wait", {"condition": condition})
    try:
        if start:
            start_container(client, path)
        if tty:
            streams.follow_resizes(
                lambda h, w: client.call("POST", f"{path}/resize", {"h": h, "w": w}).read())
        detached = threading.Event()
        with streams.raw_terminal(tty and stdin):
            if stdin:
                streams.pump_stdin(conn, detached if tty else None)
            streams.copy_output(conn, tty)
        if detached.is_set():
            # ctrl-p ctrl-q: the container runs on, as after the docker CLI's detach.
            streams.write_out(streams.STDERR, b"read escape sequence\n")
            return 0
        result = wait.json() or {}
    finally:
        conn.close()
        waiter.close()
    error = (result.get("Error") or {}).get("Message")
    if error:
        streams.write_out(streams.STDERR, f"berth: {error}\n".encode())
    return int(result.get("StatusCode", RUN_FAILED))


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    body = create_body(args)
    try:
        cid = create_container(ctx.client, body, args.name, args.pull)
        if args.detach:
            start_container(ctx.client, f"/containers/{cid}")
            out(cid)
            return 0
        condition = "removed" if args.rm else "next-exit"
        return attach_and_wait(ctx, cid, tty=args.tty, stdin=args.interactive,
                               condition=condition, start=True)
    except StartFailed as e:
        streams.write_out(streams.STDERR, f"berth: {e}\n".encode())
        return e.status
    except DaemonError as e:
        streams.write_out(streams.STDERR, f"berth: {e}\n".encode())
        return RUN_FAILED


def cmd_create(args: argparse.Namespace, ctx: Context) -> int:
    out(create_container(ctx.client, create_body(args), args.name, args.pull))
    return 0


def _is_tty(ctx: Context, container: str) -> bool:
    info = ctx.client.get(f"/containers/{quote_id(container)}/json")
    return bool(info.get("Config", {}).get("Tty"))


def cmd_start(args: argparse.Namespace, ctx: Context) -> int:
    if args.attach or args.interactive:
        if len(args.containers) != 1:
            raise UsageError("you cannot start and attach multiple containers at once")
        c = args.containers[0]
        return attach_and_wait(ctx, c, tty=_is_tty(ctx, c), stdin=args.interactive,
                               condition="next-exit", start=True)
    failed = 0
    for c in args.containers:
        try:
            ctx.client.call("POST", f"/containers/{quote_id(c)}/start", ok=(304,)).read()
            out(c)
        except DaemonError as e:
            streams.write_out(streams.STDERR, f"{e}\n".encode())
            failed = 1
    return failed


def cmd_attach(args: argparse.Namespace, ctx: Context) -> int:
    c = args.container
    return attach_and_wait(ctx, c, tty=_is_tty(ctx, c), stdin=not args.no_stdin,
                           condition="not-running", start=False)


def cmd_exec(args: argparse.Namespace, ctx: Context) -> int:
    if not args.command:
        raise UsageError("exec needs a command: berth exec CONTAINER COMMAND [ARG...]")
    client = ctx.client
    body: dict[str, Any] = {
        "AttachStdin": args.interactive and not args.detach,
        "AttachStdout": not args.detach,
        "AttachStderr": not args.detach,
        "Tty": args.tty,
        "Cmd": args.command,
        "Env": args.env or None,
        "WorkingDir": args.workdir or "",
        "User": args.user or "",
        "Privileged": args.privileged,
    }
    exec_id = client.post(f"/containers/{quote_id(args.container)}/exec",
                          json_body={k: v for k, v in body.items() if v is not None})["Id"]
    if args.detach:
        client.post(f"/exec/{exec_id}/start", json_body={"Detach": True, "Tty": args.tty})
        return 0
    conn = client.hijack("POST", f"/exec/{exec_id}/start",
                         json_body={"Detach": False, "Tty": args.tty})
    try:
        if args.tty:
            streams.follow_resizes(lambda h, w: client.call(
                "POST", f"/exec/{exec_id}/resize", {"h": h, "w": w}).read())
        detached = threading.Event()
        with streams.raw_terminal(args.tty and args.interactive):
            if args.interactive:
                streams.pump_stdin(conn, detached if args.tty else None)
            streams.copy_output(conn, args.tty)
        if detached.is_set():
            streams.write_out(streams.STDERR, b"read escape sequence\n")
            return 0
    finally:
        conn.close()
    code = client.get(f"/exec/{exec_id}/json").get("ExitCode")
    return int(code) if code is not None else RUN_FAILED


def register(sub: Any) -> None:
    p = add_verb(sub, "run", cmd_run, "Create and start a container from an image",
                 short_help=False)
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    add_run_flags(p)
    p = add_verb(sub, "create", cmd_create, "Create a container without starting it",
                 short_help=False)
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    add_run_flags(p)
    p = add_verb(sub, "start", cmd_start, "Start stopped containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout/stderr")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p = add_verb(sub, "attach", cmd_attach, "Attach to a running container's streams")
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    p.add_argument("container", metavar="CONTAINER")
    p = add_verb(sub, "exec", cmd_exec, "Run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-e", "--env", action="append", default=[], help="set KEY=VALUE")
    p.add_argument("-w", "--workdir", help="working directory")
    p.add_argument("-u", "--user", help="user[:group]")
    p.add_argument("--privileged", action="store_true", help="extended privileges")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
