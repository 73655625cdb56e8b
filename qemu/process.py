"""`start_qemu`: the QEMU process, stopped by its pid whatever happens."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("berth.qemu")


@contextmanager
def start_qemu(
    argv: Sequence[str], log_path: Path, *, interactive: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Run QEMU; stdout/stderr to `log_path`, or the terminal when interactive.

    On exit QEMU is asked to stop with SIGTERM (it closes its images
    cleanly), then killed if it lingers.
    """
    log.debug("+ %s", shlex.join(argv))
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=None if interactive else subprocess.DEVNULL,
            stdout=None if interactive else out,
            stderr=out,
            # Its own process group: a Ctrl-C meant for the harness must not
            # also kill the guest half-way.
            start_new_session=not interactive,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
