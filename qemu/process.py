"""`start_qemu`: the QEMU process, stopped by its pid whatever happens."""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runtime.sys.libc import set_pdeathsig

log = logging.getLogger("berth.qemu")


def _die_with_parent() -> None:
    set_pdeathsig(signal.SIGTERM)


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
            # A harness killed without running its cleanup (SIGKILL, a
            # timeout) must not leave QEMU running: it gets SIGTERM then.
            preexec_fn=_die_with_parent,
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
