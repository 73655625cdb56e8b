"""First-boot provisioning: what a valid file configures, and how bad input is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hostos.fleet import FleetSettings, load_fleet_settings
from hostos.provision import ProvisionError, apply, gather, parse_credentials, plan
from hostos.tomlout import dumps
from runtime import tls

ROOT_JSON = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []})


def good_toml(ca: bytes, cert: bytes, key: bytes) -> str:
    return f'''
hostname = "node-1"

[fleet]
group = "workers"
fleetlock_url = "http://10.0.2.100:8080/"
etcd_url = "http://10.0.2.101:2379"

[update]
url = "http://10.0.2.102:8000/"
strategy = "fleet_lock"
tuf_root = {json.dumps(ROOT_JSON)}

[tls]
ca = """{ca.decode()}"""
cert = """{cert.decode()}"""
key = """{key.decode()}"""

[[containers]]
name = "web"
image = "registry.local/web:1"
ports = ["80"]
env = {{ MODE = "prod" }}

[[containers]]
name = "cache"
image = "registry.local/cache:2"
'''


@pytest.fixture(scope="module")
def pki() -> tuple[bytes, bytes, bytes]:
    ca = tls.make_ca()
    server = tls.issue(ca, "berthd", tls.Usage.SERVER, names=["localhost"])
    return ca.cert_pem(), server.cert_pem(), server.key_pem()


def test_a_valid_file_configures_the_host(tmp_path: Path, pki: tuple[bytes, bytes, bytes]) -> None:
    src = tmp_path / "provision.toml"
    src.write_text(good_toml(*pki))
    data, origin = gather(src, {})
    p = plan(data, origin)
    root = tmp_path / "root"
    assert apply(p, root, set_hostname=False)
    assert (root / "etc/hostname").read_text() == "node-1\n"
    assert load_fleet_settings(root) == FleetSettings(
        "workers", "http://10.0.2.100:8080/", "http://10.0.2.101:2379")
    update = tomllib.loads((root / "etc/hostos/update.d/50-provision.toml").read_text())
    assert update == {"update": {"url": "http://10.0.2.102:8000/", "strategy": "fleet_lock"}}
    assert json.loads((root / "etc/hostos/tuf/root.json").read_text())["signed"]["_type"] == "root"
    # berthd.service has ImportCredential=berth.tls.*: the credstore feeds it.
    assert (root / "etc/credstore/berth.tls.key").read_bytes() == pki[2]
    assert (root / "etc/credstore/berth.tls.key").stat().st_mode & 0o777 == 0o600
    web = tomllib.loads((root / "etc/berth/containers.d/web.toml").read_text())
    assert web == {"name": "web", "image": "registry.local/web:1", "ports": ["80"],
                   "env": {"MODE": "prod"}}
    assert (root / "etc/berth/containers.d/cache.toml").exists()
    # Applied once; the same provisioning at the next boot changes nothing.
    (root / "etc/hostname").write_text("renamed-by-operator\n")
    assert not apply(plan(*gather(src, {})), root, set_hostname=False)
    assert (root / "etc/hostname").read_text() == "renamed-by-operator\n"


def test_credentials_override_the_file_key_by_key(tmp_path: Path) -> None:
    src = tmp_path / "provision.toml"
    src.write_text('hostname = "from-file"\n[fleet]\ngroup = "a"\n')
    creds = {"berth.provision": b'[fleet]\netcd_url = "http://etcd:2379"\n',
             "berth.provision.fleet.group": b"canary\n",
             "berth.provision.hostname": b"from-cred"}
    data, origin = gather(src, creds)
    assert origin == f"{src} + credentials"
    assert data == {"hostname": "from-cred",
                    "fleet": {"group": "canary", "etcd_url": "http://etcd:2379"}}
    _, problems = parse_credentials({"berth.provision.tls.key": b"x"})
    assert problems and "expected berth.provision.hostname" in problems[0]


def test_every_problem_is_reported_with_its_place_and_nothing_is_written(
        tmp_path: Path, pki: tuple[bytes, bytes, bytes]) -> None:
    other = tls.issue(tls.make_ca(), "x", tls.Usage.SERVER)
    bad = {
        "hostname": "-bad_name",
        "fleet": {"group": "two words", "fleetlock_url": "ftp://x", "colour": "red"},
        "update": {"strategy": "whenever", "tuf_root": "{}"},
        "tls": {"ca": pki[0].decode(), "cert": pki[1].decode(), "key": other.key_pem().decode()},
        "containers": [{"name": "web", "image": "a"}, {"name": "web"}],
    }
    with pytest.raises(ProvisionError) as e:
        plan(bad, "provision.toml")
    msg = str(e.value)
    for needle in ["hostname: '-bad_name' is not a valid host name",
                   "[fleet] group: 'two words' must match",
                   "[fleet] fleetlock_url: 'ftp://x' is not an http(s) URL",
                   "[fleet]: unknown key 'colour'",
                   "[update] strategy: 'whenever' is not one of immediate, fleet_lock, window",
                   "[update] tuf_root: not a TUF root.json",
                   "[tls]: key does not belong to cert",
                   "[[containers]] #2: name 'web' is used twice",
                   "[[containers]] #2 (web): image must be a non-empty string"]:
        assert needle in msg, msg
    assert msg.startswith("invalid provisioning (provision.toml), nothing was changed")


def test_strategies_need_their_settings() -> None:
    with pytest.raises(ProvisionError, match=r"'fleet_lock' needs \[fleet\] fleetlock_url"):
        plan({"update": {"strategy": "fleet_lock"}})
    with pytest.raises(ProvisionError, match=r"'window' needs an \[update\.window\]"):
        plan({"update": {"strategy": "window"}})
    with pytest.raises(ProvisionError, match="start: '25:00': HH:MM"):
        plan({"update": {"strategy": "window",
                         "window": {"days": ["Sat"], "start": "25:00", "minutes": 60}}})
    ok = plan({"update": {"strategy": "window",
                          "window": {"days": ["Sat", "Sun"], "start": "02:30", "minutes": 90}}})
    assert [w.path for w in ok.writes] == ["etc/hostos/update.d/50-provision.toml"]


def test_cli_prints_the_problems_without_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "provision.toml"
    src.write_text('[fleet]\ngroup = "a b"\n')
    r = subprocess.run([sys.executable, "-m", "hostos", "provision", "--file", str(src),
                        "--root", str(tmp_path / "root")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "[fleet] group: 'a b' must match" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "root").exists()
    src.write_text('[fleet\n')
    r = subprocess.run([sys.executable, "-m", "hostos", "provision", "--file", str(src),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and str(src) in r.stderr


def test_toml_writer_round_trips() -> None:
    data = {"a": 1, "b": "quote \" and \\ and \n newline", "c": [1.5, True, "x"],
            "weird key": "v", "t": {"x": {"deep": [1, 2]}, "y": False},
            "arr": [{"n": "one", "sub": {"k": "v"}}, {"n": "two", "l": [{"i": 1}]}]}
    assert tomllib.loads(dumps(data)) == data


def test_the_cli_loads_without_the_qemu_harness_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the host image there is no qemu.qmp; provisioning runs at first boot regardless."""
    import builtins

    real = builtins.__import__

    def no_qmp(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("qemu.qmp"):
            raise ModuleNotFoundError(name)
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    for mod in [m for m in sys.modules if m.startswith(("qemu.", "hostos.vm"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_qmp)
    from hostos.cli import build_parser

    args = build_parser().parse_args(["provision", "--check"])
    assert args.check
