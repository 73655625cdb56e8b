"""Networking in the booted image: a container's published port is reachable
from the machine running QEMU through the harness's port forward.

The path: 127.0.0.1:<forward> on this machine -> QEMU user networking -> the
guest's eth0 port 8080 -> Berth's nft DNAT (prerouting) -> the container's
busybox httpd on port 80 inside its own namespace, on the default bridge.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from qemu.spec import API_PORT, Forward
from runtime import tls
from runtime.run import run
from tests.privileged.images import busybox_rootfs_tar
from tests.vm.conftest import BOOT_TIMEOUT, READY_UNIT, MachineFactory, docker_cli_argv

GUEST_PORT = 8080


def fetch(url: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except OSError as e:
            error = e
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout}s: {error}")


def test_published_port_reachable_through_the_harness_forward(
    machine_factory: MachineFactory, tls_files: tls.TlsFiles, docker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    machine = machine_factory(forwards=(Forward(API_PORT), Forward(GUEST_PORT)))
    with machine:
        machine.wait_for_unit(READY_UNIT, BOOT_TIMEOUT)
        docker = docker_cli_argv(machine.api_port, tls_files)
        tar = busybox_rootfs_tar(tmp_path / "busybox.tar")
        run([*docker, "import", str(tar), "busybox:latest"], env=docker_env, timeout=300)
        cid = run([*docker, "run", "-d", "-p", f"{GUEST_PORT}:80", "-p", "80", "busybox",
                   "httpd", "-f", "-p", "80", "-h", "/etc"],
                  env=docker_env, timeout=300).stdout.strip()
        ports = run([*docker, "port", cid], env=docker_env).stdout
        assert f"80/tcp -> 0.0.0.0:{GUEST_PORT}" in ports
        url = f"http://127.0.0.1:{machine.host_port(GUEST_PORT)}/hostname"
        assert fetch(url) == cid[:12] + "\n"
