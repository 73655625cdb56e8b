"""The container runtime inside the booted Berth image: what the development
machine cannot show (it has no journald and only a hybrid cgroup hierarchy).

One persistent machine serves the module (TCG boots are slow): it boots with
a `berth.provision` credential declaring a container, gets a busybox image
through the real docker CLI over the forwarded mTLS port, runs the limit and
log checks, and is finally rebooted to show the declared container starting
on boot. The guest side is read through the harness's test shell: cgroup
files, journalctl, and the image's own `berth` CLI on the local socket.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hostos.artifacts import ImageArtifacts
from qemu.machine import Machine
from qemu.spec import Credential
from runtime import tls
from runtime.cgroups.io import weight_from_blkio
from runtime.run import run
from tests.privileged.images import busybox_rootfs_tar
from tests.vm.conftest import (
    BOOT_TIMEOUT,
    READY_UNIT,
    _factory,
    docker_cli_argv,
)

IMAGE = "busybox:latest"
DECLARED = "decl-web"
DECLARED_LINE = "declared-container-up"
# Provisioning (hostos-provision.service, before berthd) writes each
# [[containers]] table to /etc/berth/containers.d/<name>.toml.
PROVISION = f"""\
[[containers]]
name = "{DECLARED}"
image = "{IMAGE}"
cmd = ["sh", "-c", "echo {DECLARED_LINE}; exec sleep 100000"]
memory = "24m"
""".encode()


@dataclass
class Guest:
    machine: Machine
    files: tls.TlsFiles
    env: dict[str, str]

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        argv = [*docker_cli_argv(self.machine.api_port, self.files), *args]
        return run(argv, env=self.env, timeout=timeout, check=check).stdout

    def inspect(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.docker("inspect", name))[0]
        return out

    def cgroup_dir(self, name: str) -> str:
        """The container's cgroup directory in the guest, from its init's /proc entry."""
        pid = self.inspect(name)["State"]["Pid"]
        assert pid > 0, f"{name} is not running"
        rel = self.machine.check(f"cat /proc/{pid}/cgroup").strip().split("::", 1)[1]
        return "/sys/fs/cgroup" + rel

    def inspect_or_none(self, name: str) -> dict[str, Any] | None:
        found: list[dict[str, Any]] = json.loads(
            self.docker("inspect", name, check=False) or "[]")
        return found[0] if found else None

    def read(self, path: str) -> str:
        return self.machine.check(f"cat {shlex.quote(path)}").strip()


@pytest.fixture(scope="module")
def guest(image: ImageArtifacts, tls_files: tls.TlsFiles,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    make, _ = _factory(image, tls_files, tmp_path_factory)
    machine = make(persistent=True, credentials=(Credential("berth.provision", PROVISION),))
    tmp = tmp_path_factory.mktemp("runtime")
    env = {"DOCKER_CONFIG": str(tmp / "docker-config"), "DOCKER_HOST": "",
           "DOCKER_CONTEXT": "", "DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": ""}
    with machine:
        machine.wait_for_unit(READY_UNIT, BOOT_TIMEOUT)
        g = Guest(machine, tls_files, env)
        tar = busybox_rootfs_tar(tmp / "busybox.tar")
        g.docker("import", str(tar), IMAGE)
        yield g
        # The disk is thrown away: no need for a (slow) clean shutdown.
        machine.power_cut()


def guest_now(g: Guest) -> int:
    return int(g.machine.check("date +%s"))


def events(g: Guest, since: int, *filters: str) -> list[dict[str, Any]]:
    """Events from `since` up to the guest's present, through the API's events stream."""
    until = guest_now(g) + 1
    argv = ["events", "--since", str(since), "--until", str(until), "--format", "{{json .}}"]
    for f in filters:
        argv += ["--filter", f]
    return [json.loads(line) for line in g.docker(*argv).splitlines() if line.strip()]


# --- cgroup limits ------------------------------------------------------------


def test_memory_hog_is_oom_killed_and_reported(guest: Guest) -> None:
    since = guest_now(guest) - 1
    # The shell itself (the container's main process) doubles a string until
    # the kernel's OOM killer ends it: SIGKILL, exit 137.
    guest.docker("run", "-d", "--name", "hog", "--memory", "16m", IMAGE,
                 "sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done")
    code = guest.docker("wait", "hog", timeout=300).strip()
    state = guest.inspect("hog")["State"]
    assert code == "137", state
    assert state["OOMKilled"] is True, state
    assert state["ExitCode"] == 137, state
    got = events(guest, since, "container=hog", "event=oom", "event=die")
    actions = [e["Action"] for e in got]
    assert "oom" in actions, got
    die = [e for e in got if e["Action"] == "die"]
    assert die and die[0]["Actor"]["Attributes"]["exitCode"] == "137", got
    assert actions.index("oom") < actions.index("die"), actions


def test_cpus_and_memory_land_in_the_containers_cgroup(guest: Guest) -> None:
    guest.docker("run", "-d", "--name", "limited", "--cpus", "0.5", "--memory", "32m",
                 "--pids-limit", "50", "--blkio-weight", "300", IMAGE, "sleep", "600")
    cg = guest.cgroup_dir("limited")
    assert guest.read(f"{cg}/cpu.max") == "50000 100000"
    assert guest.read(f"{cg}/memory.max") == str(32 << 20)
    # No --memory-swap: as much swap as memory, as Docker (the image has zram swap).
    assert guest.read(f"{cg}/memory.swap.max") == str(32 << 20)
    # ... and inspect says so as dockerd does: MemorySwap is memory + swap.
    host_config = guest.inspect("limited")["HostConfig"]
    assert (host_config["Memory"], host_config["MemorySwap"]) == (32 << 20, 64 << 20)
    assert guest.read(f"{cg}/pids.max") == "50"
    assert guest.read(f"{cg}/io.weight").splitlines()[0] == f"default {weight_from_blkio(300)}"
    # The container sees its own limits through its cgroup namespace.
    inside = guest.docker("exec", "limited", "cat", "/sys/fs/cgroup/memory.max",
                          "/sys/fs/cgroup/cpu.max")
    assert inside.split() == [str(32 << 20), "50000", "100000"]
    guest.docker("rm", "-f", "limited")


def test_pids_limit_holds_against_a_fork_loop(guest: Guest) -> None:
    limit = 12
    # A subshell forks sleepers until fork fails; the main shell survives to
    # report what it saw, then waits so the cgroup can be read.
    script = ("cat /sys/fs/cgroup/pids.max; "
              "(i=0; while [ $i -lt 100 ]; do sleep 600 & i=$((i+1)); done); "
              "set -- /proc/[0-9]*; echo procs=$#; exec sleep 600")
    guest.docker("run", "-d", "--name", "forker", "--pids-limit", str(limit), IMAGE,
                 "sh", "-c", script)
    deadline = time.monotonic() + 120
    out = err = ""
    while "procs=" not in out and time.monotonic() < deadline:
        time.sleep(1)
        r = run([*docker_cli_argv(guest.machine.api_port, guest.files), "logs", "forker"],
                env=guest.env, timeout=60)
        out, err = r.stdout, r.stderr
    assert "procs=" in out, (out, err)
    assert out.splitlines()[0].strip() == str(limit), out
    assert "can't fork" in err, err
    procs = int(out.split("procs=")[1].split()[0])
    assert procs <= limit, out
    cg = guest.cgroup_dir("forker")
    assert int(guest.read(f"{cg}/pids.current")) <= limit
    refused = dict(line.split() for line in guest.read(f"{cg}/pids.events").splitlines())
    assert int(refused["max"]) > 0, refused
    guest.docker("rm", "-f", "forker")


# --- logs -----------------------------------------------------------------------


def test_logs_land_in_the_journal_and_read_back(guest: Guest) -> None:
    cid = guest.docker("run", "-d", "--name", "talker", IMAGE, "sh", "-c",
                       "echo out-line-1; echo err-line-1 >&2; sleep 1; echo out-line-2").strip()
    assert guest.docker("wait", "talker").strip() == "0"
    raw = guest.machine.check("journalctl -o json --no-pager CONTAINER_NAME=talker")
    entries = [json.loads(line) for line in raw.splitlines() if line.startswith("{")]
    by_message = {e["MESSAGE"]: e for e in entries}
    assert set(by_message) == {"out-line-1", "err-line-1", "out-line-2"}, entries
    for e in entries:
        # The fields Docker's journald log driver writes.
        assert e["CONTAINER_ID"] == cid[:12], e
        assert e["CONTAINER_ID_FULL"] == cid, e
        assert e["CONTAINER_NAME"] == "talker", e
    assert by_message["err-line-1"]["PRIORITY"] == "3"
    assert by_message["out-line-1"]["PRIORITY"] == "6"
    # The image's berth CLI on the local socket reads them back...
    out = guest.machine.check("berth logs talker")
    assert sorted(out.split()) == ["err-line-1", "out-line-1", "out-line-2"], out
    # ...and so does the API's logs endpoint (the docker CLI), stream by stream.
    both = run([*docker_cli_argv(guest.machine.api_port, guest.files), "logs", "talker"],
               env=guest.env, timeout=60)
    assert both.stdout.split() == ["out-line-1", "out-line-2"], both
    assert both.stderr.split() == ["err-line-1"], both
    assert guest.docker("logs", "--tail", "1", "talker").split() == ["out-line-2"]
    # -t, --since and --until read the journal too (the times are the driver's own).
    stamped: dict[str, str] = {}
    for line in guest.docker("logs", "-t", "talker").splitlines():
        when, message = line.split(" ", 1)
        stamped[message] = when
    assert set(stamped) == {"out-line-1", "out-line-2"}, stamped
    late = guest.docker("logs", "--since", stamped["out-line-2"], "talker")
    assert late.split() == ["out-line-2"], late
    early = run([*docker_cli_argv(guest.machine.api_port, guest.files), "logs", "--until",
                 stamped["out-line-1"], "talker"], env=guest.env, timeout=60)
    assert (early.stdout.split(), early.stderr.split()) == (["out-line-1"], []), early


# --- the live oom event ----------------------------------------------------------


def test_oom_event_comes_when_the_kernel_kills_not_at_exit(guest: Guest) -> None:
    since = guest_now(guest) - 1
    # A child hogs memory and is OOM-killed; the container's main process lives on.
    guest.docker("run", "-d", "--name", "survivor", "--memory", "16m", IMAGE, "sh", "-c",
                 "sh -c 'x=0123456789abcdef; while :; do x=$x$x; done'; "
                 "echo child-gone; exec sleep 600")
    deadline = time.monotonic() + 300
    while "child-gone" not in guest.docker("logs", "survivor"):
        assert time.monotonic() < deadline, "the hog was not OOM-killed"
        time.sleep(1)
    got = events(guest, since, "container=survivor", "event=oom")
    assert [e["Action"] for e in got] == ["oom"], got
    assert guest.inspect("survivor")["State"]["Running"] is True
    guest.docker("rm", "-f", "survivor")


# --- declarative containers (reboots the machine: keep last) ------------------------


def test_declared_container_starts_once_its_image_arrives(guest: Guest) -> None:
    # Provisioning declared it before the image was in the store (the fixture imports
    # it after boot): the reconciler waited, logged why, and started it on the import.
    deadline = time.monotonic() + 120
    while not guest.inspect_or_none(DECLARED):
        assert time.monotonic() < deadline, "not created after the image arrived"
        time.sleep(1)
    log = guest.machine.check("journalctl -b 0 -u berthd --no-pager -o cat")
    assert f"declarative: {DECLARED}: image {IMAGE} not found" in log, log[-3000:]
    deadline = time.monotonic() + 60
    while not guest.inspect(DECLARED)["State"]["Running"]:
        assert time.monotonic() < deadline, guest.inspect(DECLARED)["State"]
        time.sleep(1)


def test_declared_container_starts_on_boot(guest: Guest) -> None:
    m = guest.machine
    # Provisioning put the file in place before berthd started.
    declared = m.check(f"cat /etc/berth/containers.d/{DECLARED}.toml")
    assert f'image = "{IMAGE}"' in declared
    # The container runs from its file again after a reboot.
    # Flushed, then the power is cut: a clean shutdown costs minutes under TCG
    # and is not what this test is about.
    m.check("sync")
    m.power_cut()
    m.start()
    m.wait_for_unit(READY_UNIT, BOOT_TIMEOUT)
    deadline = time.monotonic() + 120
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        # "[]" (and an error) until the container exists.
        found = json.loads(guest.docker("inspect", DECLARED, check=False) or "[]")
        state = found[0]["State"] if found else {}
        if state.get("Running"):
            break
        time.sleep(1)
    if not state.get("Running"):
        _, why = m.run("ls -l /etc/berth/containers.d; berth ps -a; "
                       "journalctl -b -u berthd -u hostos-provision --no-pager | tail -40")
        raise AssertionError(f"{DECLARED} is not running after the reboot: {state}\n{why}")
    info = guest.inspect(DECLARED)
    assert info["HostConfig"]["Memory"] == 24 << 20
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    # Started in this boot: its output is in this boot's journal.
    journal = m.check(f"journalctl -b 0 -o cat --no-pager CONTAINER_NAME={DECLARED}")
    assert DECLARED_LINE in journal, journal
    cg = guest.cgroup_dir(DECLARED)
    assert guest.read(f"{cg}/memory.max") == str(24 << 20)
