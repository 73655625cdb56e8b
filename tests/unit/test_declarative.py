"""Declarative container files: parsing, validation, and what a bad file changes (nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.container.spec import RestartPolicyName
from runtime.declarative import LABEL_FILE, LABEL_HASH, DeclarativeError, load, parse, parse_size

GOOD = """
image = "busybox"
cmd = ["sleep", "1000"]
env = { MODE = "prod" }
volumes = ["/srv/www:/www:ro", "cache:/cache"]
memory = "256m"
cpus = 0.5
pids_limit = 100
labels = { team = "a" }
"""


def test_a_full_file_becomes_a_create_request() -> None:
    req = parse(GOOD, "web")
    assert (req.image, req.cmd, req.env, req.name) == ("busybox", ("sleep", "1000"),
                                                        ("MODE=prod",), "web")
    assert req.memory == 256 << 20 and req.nano_cpus == 500_000_000 and req.pids_limit == 100
    assert [(v.source, v.destination, v.read_only) for v in req.volumes] == [
        ("/srv/www", "/www", True), ("cache", "/cache", False)]
    assert req.restart_policy.name is RestartPolicyName.ALWAYS
    assert req.network_mode == "none"


@pytest.mark.parametrize("text,message", [
    ("image = ", "not valid TOML"),
    ("cmd = ['x']", "image is required"),
    ("image = 'a'\nimgae = 'b'", "unknown keys: imgae"),
    ("image = 'a'\nmemory = 'lots'", "invalid size"),
    ("image = 'a'\nrestart = 'sometimes'", "invalid restart policy"),
    ("image = 'a'\ncpus = -1", "cpus must be a positive number"),
    ("image = 'a'\nvolumes = ['/a:/b:rx']", "invalid volume specification"),
    ("image = 'a'\ncmd = [1, 2]", "cmd must be a list of strings"),
])
def test_bad_files_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(DeclarativeError, match=message):
        parse(text, "web")


def test_sizes() -> None:
    assert parse_size("512k") == 512 << 10
    assert parse_size("1g") == 1 << 30
    assert parse_size("1.5m") == 3 << 19
    assert parse_size(42) == 42


def test_load_keeps_good_files_labels_them_and_reports_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(GOOD)
    (tmp_path / "broken.toml").write_text("image = ")
    (tmp_path / "notes.txt").write_text("ignored")
    desired, errors = load(tmp_path)
    assert list(desired) == ["web"]
    assert desired["web"].request.labels[LABEL_FILE] == "web.toml"
    assert desired["web"].request.labels[LABEL_HASH] == desired["web"].digest
    assert desired["web"].request.labels["team"] == "a"
    assert list(errors) == ["broken.toml"] and "not valid TOML" in errors["broken.toml"]
    before = desired["web"].digest
    (tmp_path / "web.toml").write_text(GOOD.replace("1000", "2000"))
    assert load(tmp_path)[0]["web"].digest != before


def test_missing_directory_declares_nothing(tmp_path: Path) -> None:
    assert load(tmp_path / "nope") == ({}, {})
