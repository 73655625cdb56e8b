"""An A/B update end to end under QEMU: "update found" -> B blessed, against a plain reboot.

One VM built as image A (UEFI, persistent disk, systemd-boot's real boot
counting) takes release B from a TUF repository served over HTTP, as in
tests/vm/test_update.py. Side by side on the same VM in the same run:
- peer: a plain `systemctl reboot` of A, until berthd is active again;
- ours: from `hostos update check` having found B, through the agent's
  download + verify + slot write (hostos-update.service), the reboot, until
  systemd-bless-boot has marked B good.
The ratio is what an update costs over the reboot it needs anyway. The
agent's phases are split by its own journal lines (monotonic clock of the
guest). Needs the source checkout (it reuses the VM tests' repo server).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from hostos.keys import KeyStore
from hostos.release import make_release
from hostos.repo import KeyLayout, Repository
from qemu.machine import Machine
from qemu.spec import BootMode, Credential, MachineSpec
from runtime import tls

DESCRIPTION = "A/B update under QEMU: update found -> B blessed, vs a plain reboot"
ROOT = Path(__file__).resolve().parents[1]
READY_UNIT = "berthd.service"
# Agent journal lines that start each phase (hostos.update.check / slots / agent).
PHASES = (("download + verify", "downloading "), ("write /usr slot", "writing "),
          ("write UKI", "writing the UKI "), ("stage -> reboot", "staged "))
_MONO = re.compile(r"^\[\s*(\d+\.\d+)\]\s+\S+\s+\S+\s+(.*)$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=1800.0, help="per step, seconds")


def agent_phases(journal: str) -> dict[str, float]:
    """Seconds spent in each of PHASES, from `journalctl -o short-monotonic` of the agent."""
    starts: dict[str, float] = {}
    last = 0.0
    for line in journal.splitlines():
        m = _MONO.match(line)
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        last = t
        for name, needle in PHASES:
            if needle in text and name not in starts:
                starts[name] = t
    names = [n for n, _ in PHASES if n in starts]
    ends = [starts[n] for n in names[1:]] + [last]
    return {n: end - starts[n] for n, end in zip(names, ends, strict=True)}


def _mb(value: float | None) -> str:
    return "not logged" if value is None else f"{value:.1f} MB"


def main(args: argparse.Namespace) -> int:
    # Imported here: `python -m bench` lists benchmarks without the test tree.
    from tests.vm.conftest import build
    from tests.vm.update_support import (
        IMAGE_A,
        IMAGE_B,
        PROXY,
        Served,
        configure,
        memory_peaks,
        repo_nic_args,
        start_http_server,
        wait_blessed,
    )

    a, b = build(IMAGE_A, "0.1.0"), build(IMAGE_B, "0.2.0")
    with tempfile.TemporaryDirectory(prefix="bench-update-vm-") as tmp_s:
        tmp = Path(tmp_s)
        repo = Repository.create(tmp / "repo", KeyStore(tmp / "keys", b"bench passphrase"),
                                 KeyLayout.default())
        make_release(b.folder, b.version, repo)
        download = sum(t.length for n, t in repo.targets().items()
                       if n.startswith(f"{b.version}/"))
        files = tls.generate(tmp / "tls")
        creds = tuple(Credential(n, d) for n, d in files.server_credentials().items())
        proxy = tmp / "proxy.py"
        proxy.write_text(PROXY)
        with start_http_server(Served(repo.path)) as served:
            spec = MachineSpec(a, boot=BootMode.UEFI, persistent=True, credentials=creds,
                               extra_qemu_args=repo_nic_args(proxy, served.port))
            with Machine(spec, tmp / "vm") as m:
                m.wait_for_unit(READY_UNIT, args.timeout)
                configure(m, repo.path / "metadata" / "1.root.json")
                wait_blessed(m, args.timeout)

                resets = m.resets
                t0 = time.monotonic()
                m.check("systemctl reboot --no-block")
                m.wait_reboot(args.timeout, after=resets)
                m.wait_for_unit(READY_UNIT, args.timeout)
                reboot = time.monotonic() - t0
                print(f"  plain reboot of {a.version}: {reboot:.0f} s", flush=True)

                m.check("systemctl stop hostos-update.timer")
                out = m.check("hostos update check --no-fleet", timeout=args.timeout)
                if f"-> {b.version}" not in out:
                    raise SystemExit(f"the agent did not find {b.version}: {out}")
                resets = m.resets
                t0 = time.monotonic()
                m.check("systemctl start --no-block hostos-update.service")
                m.wait_reboot(args.timeout, after=resets)
                t_reset = time.monotonic() - t0
                m.wait_for_unit(READY_UNIT, args.timeout)
                t_ready = time.monotonic() - t0
                wait_blessed(m, args.timeout)
                t_blessed = time.monotonic() - t0
                journal = m.check("journalctl -b -1 -u hostos-update --no-pager "
                                  "-o short-monotonic")
    phases = agent_phases(journal)
    agent_peak, unit_peak = memory_peaks(journal)
    print(f"\nrelease {b.version}: {download / 1e6:.1f} MB to download (TCG, UEFI)")
    print(f"{'step':<36}{'s':>8}")
    for name, secs in phases.items():
        print(f"{'  agent: ' + name:<36}{secs:>8.0f}")
    for line in journal.splitlines():
        if "zeroed in place" in line:   # slots.write_partition: what was not written
            print(f"  {line.split(': ', 1)[-1]}")
    print(f"{'found -> reboot (apply)':<36}{t_reset:>8.0f}")
    print(f"{'found -> berthd on ' + b.version:<36}{t_ready:>8.0f}")
    print(f"{'found -> ' + b.version + ' blessed':<36}{t_blessed:>8.0f}")
    print(f"{'peer: plain reboot -> berthd':<36}{reboot:>8.0f}")
    print(f"ratio update (found -> blessed) / plain reboot: {t_blessed / reboot:.1f}")
    print(f"memory peak of hostos-update.service: {_mb(agent_peak)} when staged (its "
          f"cgroup's memory.peak), {_mb(unit_peak)} as systemd logged it at stop")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0
