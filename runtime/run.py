"""The one chokepoint for subprocesses (runtime, hostos and the QEMU harness).

argv lists only (never a shell string), stdin from /dev/null unless input is
given, `+ argv` logged at debug level, and a failure reported once as a
`CommandError` that carries the argv, the exit status and stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("berth.run")


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"{shlex.join(self.argv)} failed with status {returncode}{detail}")


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion; text mode; raise CommandError on failure if check."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    full_env = None if env is None else {**os.environ, **env}
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(
        args,
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr or "")
    return proc
