"""Shared fixtures of the VM layer: the built image, booted machines, TLS, API clients.

Boots are slow under TCG (tens of seconds on two shared cores), so:
- `booted` is module-scoped: one boot serves every read-only assertion of
  a test module. Modules that change the guest boot their own with
  `machine_factory` (function-scoped; persistent disks for reboot tests).
- the image is built once per session if it is missing (`hostos build`
  reuses its caches and queues on its lock).

Everything a test starts here is stopped here, by pid (QEMU) or by closing.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from hostos.artifacts import ImageArtifacts, load_image
from hostos.build import input_hash, project_version
from hostos.errors import HostosError
from qemu.machine import Machine
from qemu.spec import Credential, MachineSpec
from runtime import tls
from runtime.run import run

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = Path(os.environ.get("BERTH_IMAGE", ROOT / "build" / "image"))
# Generous: TCG on two cores shared with other test runs.
BOOT_TIMEOUT = float(os.environ.get("BERTH_BOOT_TIMEOUT", "900"))
READY_UNIT = "berthd.service"


@pytest.fixture(scope="session")
def image() -> ImageArtifacts:
    if "BERTH_IMAGE" in os.environ and (IMAGE_DIR / "berth.json").exists():
        artifacts = load_image(IMAGE_DIR)   # the image given, as it is
    else:
        # Built current first, as the fleet and update tests build theirs: were a stale
        # image loaded here, their build would replace it mid-session under the
        # machines of later modules (whose UKIs would name a /usr the new disk lacks).
        artifacts = build(IMAGE_DIR, project_version(ROOT))
    missing = artifacts.missing()
    assert not missing, f"image artifacts missing: {missing}"
    return artifacts


@functools.cache
def build(folder: Path, version: str) -> ImageArtifacts:
    """The image in folder, (re)built first if missing or built from other inputs.

    `make test` rebuilds only build/image; a second version (B) built from
    older inputs would test yesterday's image, so its recorded inputs hash is
    compared with the tree's. A rebuild queues on `hostos build`'s lock.
    Once per session: the update modules share the pair (sources edited
    during a run do not rebuild it under the next module).
    """
    if not _current(folder, version):
        run([sys.executable, "-m", "hostos", "build", "--version", version,
             "--output", folder], capture=False, cwd=ROOT, timeout=3600)
    return load_image(folder)


def _current(folder: Path, version: str) -> bool:
    try:
        image = load_image(folder)
    except HostosError:
        return False
    return (image.version == version and not image.missing()
            and image.inputs == input_hash(ROOT, version))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tls.TlsFiles:
    """A CA with a server pair (for berthd, as credentials) and a client pair (host)."""
    return tls.generate(tmp_path_factory.mktemp("tls"))


def tls_credentials(files: tls.TlsFiles) -> tuple[Credential, ...]:
    return tuple(Credential(name, data) for name, data in files.server_credentials().items())


MachineFactory = Callable[..., Machine]


def _factory(
    image: ImageArtifacts, files: tls.TlsFiles, tmp: pytest.TempPathFactory
) -> tuple[MachineFactory, list[Machine]]:
    started: list[Machine] = []

    def make(**overrides: Any) -> Machine:
        """A Machine (not started) with the TLS credentials and the API forward."""
        spec = MachineSpec(image, credentials=tls_credentials(files))
        extra_creds = overrides.pop("credentials", ())
        spec = replace(spec, credentials=spec.credentials + tuple(extra_creds), **overrides)
        # Short state paths: unix socket paths are limited to 108 bytes.
        machine = Machine(spec, tmp.mktemp("vm"))
        started.append(machine)
        return machine

    return make, started


@pytest.fixture
def machine_factory(
    image: ImageArtifacts, tls_files: tls.TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MachineFactory]:
    """make(**MachineSpec fields) -> Machine; start it yourself; stopped at teardown."""
    make, started = _factory(image, tls_files, tmp_path_factory)
    yield make
    for m in started:
        m.stop()


@pytest.fixture(scope="module")
def booted(
    image: ImageArtifacts, tls_files: tls.TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """One boot per test module, up to berthd's READY=1; do not change the guest."""
    make, _ = _factory(image, tls_files, tmp_path_factory)
    with make() as machine:
        machine.wait_for_unit(READY_UNIT, BOOT_TIMEOUT)
        yield machine


@dataclass(frozen=True)
class ApiClient:
    """Docker Engine API over the forwarded mTLS port (http.client, no extra deps)."""

    port: int
    context: ssl.SSLContext

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 60.0) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, json.loads(data) if "json" in ctype and data else data.decode()

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)


def client_context(files: tls.TlsFiles) -> ssl.SSLContext:
    return tls.client_context(files.ca, files.client_cert, files.client_key)


@pytest.fixture(scope="module")
def api(booted: Machine, tls_files: tls.TlsFiles) -> ApiClient:
    return ApiClient(booted.api_port, client_context(tls_files))


def docker_cli_argv(port: int, files: tls.TlsFiles) -> list[str]:
    """The real docker CLI pointed at a guest's forwarded mTLS port."""
    return ["docker", *files.docker_flags(), "-H", f"tcp://127.0.0.1:{port}"]


@pytest.fixture(scope="module")
def docker_cli(booted: Machine, tls_files: tls.TlsFiles) -> list[str]:
    return docker_cli_argv(booted.api_port, tls_files)


@pytest.fixture
def docker_env(tmp_path: Path) -> dict[str, str]:
    """Keeps the docker CLI away from the user's ~/.docker (contexts, DOCKER_HOST)."""
    return {"DOCKER_CONFIG": str(tmp_path / "docker-config"), "DOCKER_HOST": "",
            "DOCKER_CONTEXT": "", "DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": ""}
