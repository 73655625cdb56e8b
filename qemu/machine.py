"""`Machine`: boot the Berth image under QEMU, talk to it, cut its power.

    with Machine(MachineSpec(image, credentials=...), state_dir) as m:
        m.wait_for_unit("berthd.service", 300)
        status, out = m.run("systemctl --failed")
        port = m.api_port

The image is never written: every boot runs on a qcow2 overlay in
`state_dir`. A throw-away machine gets a fresh overlay (and a fresh copy of
the EFI variables) each time it starts; a persistent one (spec.persistent)
keeps them across reboots, power cuts and new QEMU processes, as a real
disk and NVRAM would.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from qemu.accel import Accel, AccelChoice, choose_accel
from qemu.cmdline import QEMU_BINARY, MachinePaths, qemu_cmd
from qemu.console import TAIL_LINES, Console
from qemu.firmware import Firmware, find_firmware
from qemu.monitor import Monitor
from qemu.process import start_qemu
from qemu.shell import GuestCommandTimeout, GuestShell, ShellError
from qemu.spec import API_PORT, BootMode, ConsoleMode, ForwardProto, MachineSpec
from runtime.run import run

log = logging.getLogger("berth.qemu")

# `info usernet` lines: "TCP[HOST_FORWARD]  9  127.0.0.1 40417  10.0.2.15  2376 ..."
# Console lines after which a boot never reaches its units.
_DEAD_ENDS = ("You are in emergency mode", "Kernel panic - not syncing")
# On the console once an init runs (the kernel's own lines stop at loglevel=4).
_USERSPACE_MARKS = ("systemd[1]", "Booting initrd", "Welcome to")
_USERNET_FORWARD = re.compile(
    r"^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)", re.MULTILINE
)


class MachineError(Exception):
    """QEMU could not be started or stopped; the message carries QEMU's own words."""


def parse_usernet_forwards(text: str) -> dict[tuple[ForwardProto, int], int]:
    """(proto, guest port) -> host port, from HMP `info usernet`."""
    return {
        (ForwardProto(m.group(1).lower()), int(m.group(4))): int(m.group(3))
        for m in _USERNET_FORWARD.finditer(text)
    }


def disk_format(path: Path) -> str:
    info = json.loads(run(["qemu-img", "info", "--output=json", path]).stdout)
    return str(info["format"])


class Machine:
    def __init__(
        self,
        spec: MachineSpec,
        state_dir: Path,
        *,
        accel: Accel | None = None,
        firmware: Firmware | None = None,
        binary: str = QEMU_BINARY,
    ) -> None:
        self.spec = spec
        self.paths = MachinePaths(state_dir)
        self.accel: AccelChoice = choose_accel(accel)
        self._firmware = firmware
        self._binary = binary
        self._stack: ExitStack | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._monitor: Monitor | None = None
        self._shell: GuestShell | None = None
        self._ports: dict[tuple[ForwardProto, int], int] = {}
        self._boot_offset = 0
        # Console offset at the last guest reset (same QEMU process); set by _on_reset.
        self._reset_offset: int | None = None
        self.started_at = 0.0
        self._panic_retried = False   # see _boot_again_after_emulator_panic
        self.console = Console(self.paths.console_log, self.exit_status)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _prepare_disk(self) -> None:
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        fresh = not self.spec.persistent
        if fresh or not self.paths.overlay.exists():
            self.paths.overlay.unlink(missing_ok=True)
            disk = self.spec.image.disk.resolve()
            if not disk.is_file():
                raise MachineError(f"image disk {disk} does not exist; run `hostos build`")
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk_format(disk),
                 "-b", disk, self.paths.overlay])
        if self.spec.boot is BootMode.UEFI:
            if self._firmware is None:
                self._firmware = find_firmware()
            if fresh or not self.paths.efi_vars.exists():
                shutil.copyfile(self._firmware.vars_template, self.paths.efi_vars)

    def argv(self) -> list[str]:
        return qemu_cmd(self.spec, self.paths, self.accel.accel, self._firmware,
                        binary=self._binary)

    def start(self) -> None:
        """Boot (again). A persistent machine boots from the disk it left behind."""
        if self.running:
            raise MachineError(f"{self.spec.name} is already running (pid {self.pid})")
        self._prepare_disk()
        for sock in (self.paths.qmp_socket, self.paths.shell_socket):
            sock.unlink(missing_ok=True)
        self._boot_offset = self.console.size()
        self._reset_offset = None
        stack = ExitStack()
        try:
            self.started_at = time.monotonic()
            self._proc = stack.enter_context(start_qemu(
                self.argv(), self.paths.qemu_log,
                interactive=self.spec.console is ConsoleMode.STDIO,
            ))
            log.info("qemu: %s started (pid %d, %s boot, %s), console %s",
                     self.spec.name, self._proc.pid, self.spec.boot, self.accel.accel,
                     self.paths.console_log)
            monitor = Monitor(self.paths.qmp_socket, self.spec.name)
            stack.callback(monitor.close)
            try:
                monitor.connect(timeout=30, exit_status=self.exit_status)
            except Exception as e:
                raise MachineError(f"QEMU did not come up: {e}\n{self._qemu_log_tail()}") from e
            self._monitor = monitor
            self._ports = parse_usernet_forwards(monitor.human("info usernet"))
            shell = GuestShell(self.paths.shell_socket, self.exit_status,
                               self.paths.shell_log, self._boot_failure,
                               boot_menu=self.spec.boot == BootMode.UEFI)
            shell.connect()
            stack.callback(shell.close)
            self._shell = shell
            # At the reset itself: noticed later (the next command, seconds or
            # minutes on), the new boot's first output on ttyS1 would already
            # count as the old boot's, and the shell would wait for more forever.
            monitor.on_event("RESET", self._on_reset)
        except BaseException:
            stack.close()
            self._clear()
            raise
        self._stack = stack

    def _boot_again_after_emulator_panic(self) -> bool:
        """Under TCG, a guest kernel that panicked in its own start-up, before it ran any
        init, boots once more: multi-threaded TCG now and then lets a vCPU run an int3
        that the kernel's text patching has already taken out ("Oops: int3" in
        sched_clock_cpu, seen once in ~100 boots). A panic of the image's own making
        comes again on the second boot and fails it."""
        text = self.console.text(self._boot_offset)
        if (self.accel.accel is not Accel.TCG or self._panic_retried or self.resets
                or "Kernel panic - not syncing" not in text
                or any(mark in text for mark in _USERSPACE_MARKS)):
            return False
        self._panic_retried = True
        self.power_cut()   # a panicked guest ignores the power button: nothing to flush
        log.warning("qemu: %s: the guest kernel panicked before init under TCG; booting "
                    "it once more. Last console lines:\n%s", self.spec.name,
                    "\n".join(text.splitlines()[-TAIL_LINES:]))
        self.stop()
        self.start()
        return True

    def _boot_failure(self) -> str | None:
        """Why this boot can no longer come up, from its console; None if it still may."""
        text = self.console.text(self._boot_offset_of_this_boot())
        for needle in _DEAD_ENDS:
            if needle in text:
                return f"{needle!r} on the console; last lines:\n" + "\n".join(
                    text.splitlines()[-TAIL_LINES:])
        return None

    def _boot_offset_of_this_boot(self) -> int:
        return self._reset_offset if self._reset_offset is not None else self._boot_offset

    def _clear(self) -> None:
        self._proc = None
        self._monitor = None
        self._shell = None
        self._stack = None

    def _qemu_log_tail(self) -> str:
        try:
            return "\n".join(self.paths.qemu_log.read_text(errors="replace").splitlines()[-10:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Shut down: cleanly if the disk is kept, else by cutting the power."""
        if self.running:
            if self.spec.persistent:
                try:
                    self.poweroff()
                except MachineError as e:
                    log.warning("qemu: %s", e)
            else:
                self.power_cut()
        if self._stack is not None:
            self._stack.close()
        self._clear()
        if not self.spec.persistent:
            self.paths.overlay.unlink(missing_ok=True)
            self.paths.efi_vars.unlink(missing_ok=True)

    # -- state ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def exit_status(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def host_port(self, guest_port: int, proto: ForwardProto = ForwardProto.TCP) -> int:
        """The 127.0.0.1 port forwarded to `guest_port` in this boot."""
        try:
            return self._ports[(proto, guest_port)]
        except KeyError:
            raise MachineError(f"guest port {proto}/{guest_port} is not forwarded") from None

    @property
    def api_port(self) -> int:
        return self.host_port(API_PORT)

    # -- console -------------------------------------------------------------

    def mark(self) -> int:
        """A console position; `wait_for(..., since=mark)` looks only after it."""
        return self.console.size()

    def wait_for(self, pattern: str, timeout: float, since: int | None = None) -> re.Match[str]:
        """Wait for `pattern` on the console in this boot (or after `since`)."""
        return self.console.wait_for(
            pattern, timeout, self._boot_offset if since is None else since
        )

    def wait_for_unit(self, unit: str, timeout: float) -> float:
        """Wait until `unit` is active (for Type=notify: it sent READY=1).

        Asks systemd through the test shell. Without it, reads the console's
        "Started ..." line (systemd prints none while a getty holds the
        console: logged consoles boot with systemd.getty_auto=0).
        Returns seconds since QEMU started; fails early if the unit failed.
        """
        deadline = time.monotonic() + timeout
        if self._shell is None or not self.spec.test_shell:
            return self._wait_for_unit_on_console(unit, timeout)
        try:
            self._shell.wait_ready(timeout)
        except ShellError:
            if not self._boot_again_after_emulator_panic():
                raise
            return self.wait_for_unit(unit, max(deadline - time.monotonic(), 1.0))
        u = shlex.quote(unit)
        script = (
            f"until systemctl is-active -q {u}; do "
            f"if systemctl is-failed -q {u}; then systemctl status --no-pager {u}; exit 1; fi; "
            "sleep 0.3; done"
        )
        left = max(deadline - time.monotonic(), 1.0)
        try:
            status, out = self._shell.run(script, left)
        except GuestCommandTimeout:
            raise MachineError(
                f"{unit} not active within {timeout:.0f} s; last console lines:\n"
                + self.console.tail(since=self._boot_offset)
            ) from None
        if status != 0:
            raise MachineError(f"{unit} failed:\n{out}")
        return time.monotonic() - self.started_at

    def _wait_for_unit_on_console(self, unit: str, timeout: float) -> float:
        pattern = rf"(Started|Failed to start) {re.escape(unit)}"
        m = self.wait_for(pattern, timeout)
        if m.group(1) != "Started":
            raise MachineError(f"{unit} failed; last console lines:\n"
                               + self.console.tail(since=self._boot_offset))
        return time.monotonic() - self.started_at

    # -- guest commands --------------------------------------------------------

    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run `cmd` (bash) as root in the guest: (exit status, stdout+stderr)."""
        if self._shell is None or not self.spec.test_shell:
            raise MachineError("the test shell is not enabled (MachineSpec.test_shell)")
        return self._shell.run(cmd, timeout)

    def check(self, cmd: str, timeout: float = 60.0) -> str:
        """Like run(), but a non-zero status is an error carrying the output."""
        status, out = self.run(cmd, timeout)
        if status != 0:
            raise MachineError(f"guest command {cmd!r} exited with {status}:\n{out}")
        return out

    # -- power -----------------------------------------------------------------

    def _mon(self) -> Monitor:
        if self._monitor is None or not self.running:
            raise MachineError(f"{self.spec.name} is not running")
        return self._monitor

    def _on_reset(self) -> None:
        """On the monitor's thread, as the guest resets: a new boot starts here."""
        self._reset_offset = self.console.size()
        shell = self._shell
        if shell is not None:
            shell.forget()

    @property
    def resets(self) -> int:
        """How many times the guest reset (rebooted) in this QEMU process."""
        return 0 if self._monitor is None else self._monitor.event_count("RESET")

    def wait_reboot(self, timeout: float, after: int | None = None) -> None:
        """Wait for the guest to reboot: the (after+1)-th RESET of this process."""
        count = self.resets if after is None else after
        if self._mon().wait_event("RESET", count, timeout) is None:
            raise MachineError(
                f"{self.spec.name} did not reboot within {timeout:.0f} s; last console lines:\n"
                + self.console.tail(since=self._boot_offset)
            )

    def wait_exit(self, timeout: float | None) -> int:
        if self._proc is None:
            raise MachineError(f"{self.spec.name} was never started")
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MachineError(
                f"{self.spec.name} still running after {timeout:.0f} s; last console lines:\n"
                + self.console.tail(since=self._boot_offset)
            ) from None
        if self._stack is not None:
            self._stack.close()
        self._proc_done()
        return status

    def _proc_done(self) -> None:
        proc = self._proc
        self._clear()
        self._proc = proc  # keep the exit status readable

    def poweroff(self, timeout: float = 120.0) -> None:
        """ACPI power button: a clean shutdown that flushes the guest's disks."""
        self._mon().execute("system_powerdown")
        try:
            self.wait_exit(timeout)
        except MachineError:
            self.power_cut()
            raise

    def power_cut(self) -> None:
        """Pull the plug: QEMU stops at once; whatever the guest had not flushed is lost."""
        if not self.running:
            return
        try:
            self._mon().execute("quit", timeout=10)
        except Exception as e:  # the process is killed below either way
            log.debug("qmp quit: %r", e)
        try:
            self.wait_exit(15)
        except MachineError:
            if self._stack is not None:
                self._stack.close()  # SIGTERM, then SIGKILL
            self._proc_done()

    def reset(self) -> None:
        """Hard reset (the reset button): same process, same disk, no clean shutdown."""
        self._mon().execute("system_reset")
