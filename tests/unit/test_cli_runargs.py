"""`berth run` flags beyond the basics, as Docker's CLI sends them: --mount,
--label-file, --userns; and their refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.api.container_views import create_request
from runtime.cli import build_parser
from runtime.cli.common import UsageError
from runtime.cli.runargs import create_body


def body(*argv: str) -> dict[str, object]:
    return create_body(build_parser().parse_args(["run", *argv]), environ={})


def test_mount_label_file_userns(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.write_text("# team labels\nteam=a\n\ntier=web\n")
    b = body("--mount", "type=bind,source=/srv,target=/data,readonly",
             "--mount", "type=volume,src=cache,dst=/cache", "--mount", "type=tmpfs,target=/run",
             "--label-file", str(labels), "-l", "tier=db", "--userns", "host", "busybox")
    hc = b["HostConfig"]
    assert isinstance(hc, dict)
    assert hc["Mounts"] == [
        {"Type": "bind", "Source": "/srv", "Target": "/data", "ReadOnly": True},
        {"Type": "volume", "Source": "cache", "Target": "/cache", "ReadOnly": False},
        {"Type": "tmpfs", "Source": "", "Target": "/run", "ReadOnly": False}]
    assert hc["UsernsMode"] == "host"
    assert b["Labels"] == {"team": "a", "tier": "db"}      # -l after the file wins
    # ...and the daemon's side reads the same body into the engine's request.
    req = create_request(b, None, {})
    vols = {(v.source, v.destination, v.read_only) for v in req.volumes}
    assert vols == {("/srv", "/data", True), ("cache", "/cache", False)}
    assert req.tmpfs == ("/run",) and req.userns is False


@pytest.mark.parametrize("spec", ["type=nfs,target=/x", "type=bind,target=/x",
                                  "type=volume,source=v"])
def test_bad_mounts_are_refused_before_the_daemon(spec: str) -> None:
    with pytest.raises(UsageError):
        body("--mount", spec, "busybox")


def test_detach_keys_are_found_across_reads_and_held_back_only_while_they_may_match() -> None:
    from runtime.cli.streams import EscapeProxy

    p = EscapeProxy()
    assert p.feed(b"ls\r") == (b"ls\r", False)
    assert p.feed(b"a\x10") == (b"a", False)         # ctrl-p held: it may begin the sequence
    assert p.feed(b"x") == (b"\x10x", False)         # it did not: sent on with what follows
    assert p.feed(b"\x10") == (b"", False)
    assert p.feed(b"\x11rest") == (b"", True)        # ctrl-p ctrl-q: detach, keys not sent
