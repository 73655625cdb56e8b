"""Boot the Berth image once and check what a user of a fresh host relies on."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

import pytest

import runtime
from qemu.machine import Machine
from runtime import tls
from runtime.run import run
from tests.vm.conftest import ApiClient

CONTROLLERS = {"memory", "cpu", "pids", "io"}


def test_berthd_signalled_ready(booted: Machine) -> None:
    # Type=notify: "active" only after berthd sent READY=1.
    out = booted.check("systemctl show -p ActiveState -p SubState -p Type berthd.service")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert props == {"ActiveState": "active", "SubState": "running", "Type": "notify"}, out


def test_boot_finished_with_no_failed_unit(booted: Machine) -> None:
    _, state = booted.run("systemctl is-system-running --wait", timeout=600)
    _, failed = booted.run("systemctl --failed --no-legend --plain")
    units = [line.split()[0] for line in failed.splitlines() if line.strip()]
    if units:
        _, status = booted.run("systemctl status --no-pager -n 15 " + " ".join(units))
        pytest.fail(f"failed units: {units}\n{status}")
    assert state.strip() == "running", state


def test_version_over_mutual_tls(api: ApiClient) -> None:
    status, body = api.get("/version")
    assert status == 200
    assert body["Version"] == runtime.__version__
    assert body["Platform"]["Name"] == "Berth"
    status, body = api.get("/v1.43/version")
    assert status == 200 and body["Version"] == runtime.__version__
    assert api.get("/_ping") == (200, "OK")


def test_docker_cli_shows_berths_version(
    docker_cli: list[str], docker_env: dict[str, str]
) -> None:
    out = run([*docker_cli, "version", "--format", "{{json .Server}}"],
              env=docker_env, timeout=120).stdout
    server = json.loads(out)
    assert server["Version"] == runtime.__version__
    assert server["Platform"]["Name"] == "Berth"


def _get_version(port: int, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        conn.request("GET", "/version")
        return conn.getresponse().status
    finally:
        conn.close()


def test_request_without_client_certificate_is_refused(
    booted: Machine, tls_files: tls.TlsFiles
) -> None:
    no_cert = ssl.create_default_context(cafile=str(tls_files.ca))
    # TLS 1.3 reports the missing certificate after the handshake, on the
    # first read: either way no HTTP response may come back.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get_version(booted.api_port, no_cert)


def test_client_certificate_from_another_ca_is_refused(
    booted: Machine, tls_files: tls.TlsFiles, tmp_path: Path
) -> None:
    stranger = tls.generate(tmp_path / "stranger")
    context = tls.client_context(tls_files.ca, stranger.client_cert, stranger.client_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get_version(booted.api_port, context)


def test_usr_is_a_read_only_verity_device(booted: Machine) -> None:
    out = booted.check("findmnt -n -o SOURCE,FSTYPE,OPTIONS /usr")
    source, fstype, options = out.split()
    assert "ro" in options.split(","), out
    majmin = booted.check("findmnt -n -o MAJ:MIN /usr").strip()
    status, uuid = booted.run(f"cat /sys/dev/block/{majmin}/dm/uuid")
    assert status == 0, f"/usr is on {source} ({majmin}), not a device-mapper device"
    # libcryptsetup names verity targets CRYPT-VERITY-<uuid>.
    assert uuid.startswith("CRYPT-VERITY-"), uuid
    assert fstype in {"erofs", "squashfs"}, out
    status, err = booted.run("touch /usr/berth-write-test")
    assert status != 0 and "Read-only" in err, err


def test_cgroup2_is_unified_with_the_controllers(booted: Machine) -> None:
    assert booted.check("stat -f -c %T /sys/fs/cgroup").strip() == "cgroup2fs"
    controllers = set(booted.check("cat /sys/fs/cgroup/cgroup.controllers").split())
    assert controllers >= CONTROLLERS, controllers
