"""The `berth` CLI without a daemon: flags to API bodies, value parsers, output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from runtime.cli import build_parser, main
from runtime.cli.common import (
    UsageError,
    human_duration,
    human_size,
    parse_bytes,
    parse_duration,
    parse_filters,
    parse_time,
    render,
    table,
)
from runtime.cli.images import split_ref
from runtime.cli.runargs import create_body, parse_port, parse_restart
from runtime.cli.streams import encode_frame, frames, frames_from_chunks
from runtime.client import Client, Endpoint


def body(*argv: str, env: dict[str, str] | None = None) -> dict[str, object]:
    args = build_parser().parse_args(["run", *argv])
    return create_body(args, environ=env or {})


def test_run_flags_become_docker_create_body() -> None:
    b = body("-d", "--rm", "--name", "web", "-e", "A=1", "-e", "HOME", "-w", "/srv", "-u",
             "1000:1000", "-h", "box", "-m", "512m", "--cpus", "1.5", "--pids-limit", "64",
             "--restart", "on-failure:3", "--network", "host", "--read-only",
             "-v", "/data:/data:ro", "-v", "/anon", "-l", "tier=web", "-p", "8080:80",
             "-p", "53/udp", "busybox", "sh", "-c", "echo hi", env={"HOME": "/root"})
    assert b["Image"] == "busybox"
    assert b["Cmd"] == ["sh", "-c", "echo hi"]
    assert b["Env"] == ["A=1", "HOME=/root"]
    assert (b["WorkingDir"], b["User"], b["Hostname"]) == ("/srv", "1000:1000", "box")
    assert b["Labels"] == {"tier": "web"}
    assert b["Volumes"] == {"/anon": {}}
    assert b["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert b["AttachStdout"] is False  # -d
    hc = b["HostConfig"]
    assert isinstance(hc, dict)
    assert hc["Memory"] == 512 << 20
    assert hc["NanoCpus"] == 1_500_000_000
    assert hc["PidsLimit"] == 64
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["NetworkMode"] == "host"
    assert hc["ReadonlyRootfs"] is True and hc["AutoRemove"] is True
    assert hc["Binds"] == ["/data:/data:ro"]
    assert hc["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                                  "53/udp": [{"HostIp": "", "HostPort": ""}]}


def test_options_after_the_image_belong_to_the_command() -> None:
    b = body("busybox", "ls", "-l", "--name", "x")
    assert b["Cmd"] == ["ls", "-l", "--name", "x"]
    assert "Name" not in b


def test_interactive_tty_attaches_stdin() -> None:
    b = body("-it", "busybox")
    assert b["Tty"] is True and b["OpenStdin"] is True
    assert b["AttachStdin"] is True and b["StdinOnce"] is True
    assert "Cmd" not in b  # the image's command


@pytest.mark.parametrize("argv, message", [
    (["--restart", "sometimes"], "invalid restart policy"),
    (["--restart", "always:3"], "only on-failure takes a count"),
    (["-m", "lots"], "invalid size"),
    (["-p", "99999"], "not a port number"),
    (["-v", "relative"], "must be absolute"),
    (["-v", "/a:/b:rx"], "mode must be ro or rw"),
    (["--cpus", "0"], "must be more than 0"),
])
def test_bad_run_flags_are_one_line_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        body(*argv, "busybox")


def test_bad_flags_exit_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    # No daemon is needed: the flags are refused before any connection.
    status = main(["-H", "unix:///nonexistent.sock", "run", "--restart", "bogus", "busybox"])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.strip().startswith("berth: invalid restart policy")
    assert "Traceback" not in captured.err


def test_no_daemon_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-H", "unix:///nonexistent/berthd.sock", "ps"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("berth: Cannot connect to the daemon at unix:///nonexistent")
    assert len(err.splitlines()) == 1


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    verbs = ["run", "create", "start", "attach", "exec", "ps", "stop", "restart", "kill", "rm",
             "pause", "unpause", "wait", "rename", "logs", "inspect", "top", "stats", "port",
             "images", "load", "import", "save", "rmi", "history", "tag", "version", "info",
             "events", "volume", "volume create", "volume ls", "volume inspect", "volume rm",
             "volume prune", "image ls", "image prune", "container ls", "container prune",
             "system df", "build", "attest", "pull", "push", "login", "sign", "verify"]
    for verb in verbs:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*verb.split(), "--help"])
        assert exit_info.value.code == 0, verb
        assert "usage: berth" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ("1024", 1024), ("512m", 512 << 20), ("1g", 1 << 30), ("1.5GB", 3 << 29), ("64k", 65536),
])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_parse_duration_and_times() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    with pytest.raises(UsageError):
        parse_duration("10 minutes")
    assert parse_time("1700000000") == "1700000000"
    assert parse_time("10m", now=1000.0) == "400.000000000"
    assert parse_time("2023-11-14T22:13:20Z") == "1700000000.000000000"


def test_restart_and_port_parsers() -> None:
    assert parse_restart("no") == {"Name": "", "MaximumRetryCount": 0}
    assert parse_restart("unless-stopped")["Name"] == "unless-stopped"
    assert parse_port("127.0.0.1:8080:80/tcp") == ("80/tcp", {"HostIp": "127.0.0.1",
                                                              "HostPort": "8080"})
    assert parse_port("127.0.0.1::80") == ("80/tcp", {"HostIp": "127.0.0.1", "HostPort": ""})


def test_filters_and_refs() -> None:
    assert json.loads(parse_filters(["status=exited", "status=created", "label=a=b"]) or "") \
        == {"status": ["exited", "created"], "label": ["a=b"]}
    assert parse_filters([]) is None
    with pytest.raises(UsageError):
        parse_filters(["novalue"])
    assert split_ref("busybox") == ("busybox", "latest")
    assert split_ref("localhost:5000/app:1.2") == ("localhost:5000/app", "1.2")
    assert split_ref("localhost:5000/app") == ("localhost:5000/app", "latest")


def test_output_formats() -> None:
    assert human_size(1_980_000) == "1.98MB"
    assert human_size(512) == "512B"
    assert human_duration(0.2) == "Less than a second"
    assert human_duration(150) == "2 minutes"
    assert human_duration(3600 * 3) == "3 hours"
    assert table(["A", "BB"], [["xxx", "y"]]) == "A     BB\nxxx   y"
    doc = {"State": {"Status": "running", "Running": True}, "Name": "/web", "Ports": [1]}
    assert render("{{.State.Status}} {{.Name}}", doc) == "running /web"
    assert render("{{.State.Running}} {{json .Ports}}", doc) == "true [1]"
    assert render("{{.Missing.Field}}", doc) == "<no value>"


def test_multiplexed_frames_round_trip() -> None:
    stream = encode_frame(1, b"out\n") + encode_frame(2, b"err\n") + encode_frame(1, b"")
    assert list(frames(io.BytesIO(stream))) == [(1, b"out\n"), (2, b"err\n"), (1, b"")]
    # Split at every possible place: the decoder must not depend on chunk boundaries.
    for cut in range(len(stream)):
        assert list(frames_from_chunks(iter([stream[:cut], stream[cut:]]))) == \
            [(1, b"out\n"), (2, b"err\n"), (1, b"")]


def test_client_host_selection_and_urls() -> None:
    c = Client.from_env(env={"DOCKER_HOST": "tcp://10.0.0.1:2376", "DOCKER_API_VERSION": "1.41"})
    assert c.endpoint == Endpoint(host="10.0.0.1", port=2376) and c.version == "1.41"
    c = Client.from_env(env={"BERTH_HOST": "unix:///x.sock", "DOCKER_HOST": "tcp://a:1"})
    assert c.endpoint == Endpoint(unix_path="/x.sock")
    assert c.url("/images/create", {"fromSrc": "-", "changes": ["CMD sh", "ENV A=1"],
                                    "quiet": True, "tag": None}) == \
        "/v1.47/images/create?fromSrc=-&changes=CMD+sh&changes=ENV+A%3D1&quiet=1"


def test_sign_verbs_load_only_when_asked() -> None:
    from runtime.cli import wants_sign_verbs

    assert wants_sign_verbs(["-H", "unix:///x", "login", "reg:5000"])
    assert wants_sign_verbs(["--help"])
    assert not wants_sign_verbs(["-H", "login", "run", "busybox"])  # "login" is -H's value
    assert not wants_sign_verbs(["run", "--rm", "busybox", "sign"])


def test_ps_format_uses_dockers_field_names() -> None:
    from runtime.cli.containers import ps_fields

    entry = {"Id": "a" * 64, "Names": ["/web"], "Image": "busybox", "Command": "sleep 9",
             "Created": 0, "State": "running", "Status": "Up 1 second",
             "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768,
                        "Type": "tcp"}], "Labels": {"b": "2", "a": "1"}}
    fields = ps_fields(entry, no_trunc=False)
    assert render("{{.ID}} {{.Names}} {{.State}} {{.Labels}}", fields) == \
        "aaaaaaaaaaaa web running a=1,b=2"
    assert render("{{.Ports}} {{.Command}}", fields) == \
        '0.0.0.0:32768->80/tcp "sleep 9"'


def test_parser_for_one_verb_parses_like_the_full_one() -> None:
    from runtime.cli import first_verb

    argv = ["-H", "unix:///x.sock", "run", "--rm", "-e", "A=1", "busybox", "true"]
    assert first_verb(argv) == "run"
    only = build_parser(with_sign_verbs=False, verb="run").parse_args(argv)
    full = build_parser(with_sign_verbs=False).parse_args(argv)
    assert vars(only) == vars(full)
    group = ["container", "ls", "-a"]
    assert build_parser(False, verb="container").parse_args(group).all is True
    # A typo still gets argparse's list of every verb.
    with pytest.raises(SystemExit):
        build_parser(False, verb="rn").parse_args(["rn"])


def test_tls_files_default_to_docker_cert_path(tmp_path: Path) -> None:
    from runtime.cli import tls_from_args

    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    args = build_parser(False, verb="ps").parse_args(["--tlsverify", "ps"])
    tls = tls_from_args(args, env={"DOCKER_CERT_PATH": str(tmp_path)})
    assert tls is not None and tls.verify
    assert (tls.ca, tls.cert, tls.key) == tuple(str(tmp_path / n)
                                               for n in ("ca.pem", "cert.pem", "key.pem"))
    given = build_parser(False, verb="ps").parse_args(["--tlscacert", "/my/ca", "ps"])
    tls = tls_from_args(given, env={"DOCKER_CERT_PATH": str(tmp_path)})
    assert tls is not None and tls.ca == "/my/ca" and tls.cert == str(tmp_path / "cert.pem")
    assert tls_from_args(build_parser(False, verb="ps").parse_args(["ps"])) is None


def test_each_verb_is_found_in_the_module_that_registers_it() -> None:
    # `berth VERB` imports only VERB_MODULES[VERB]; a verb missing or misplaced there
    # would still work (the full parser is the fallback) but lose the fast start.
    import argparse
    import importlib

    from runtime.cli import VERB_MODULES

    class Recorder:
        def __init__(self) -> None:
            self.names: list[str] = []

        def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
            self.names.append(name)
            return argparse.ArgumentParser(add_help=bool(kwargs.get("add_help", True)))

    registered: dict[str, str] = {}
    for module in sorted(set(VERB_MODULES.values())):
        rec = Recorder()
        importlib.import_module(f"runtime.cli.{module}").register(rec)
        registered.update(dict.fromkeys(rec.names, module))
    assert registered == VERB_MODULES


def test_a_run_imports_only_its_verbs_module() -> None:
    import subprocess
    import sys

    code = ("import sys; from runtime.cli import build_parser; build_parser(False, 'run'); "
            "print(sorted(m for m in sys.modules if m.startswith('runtime.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert "runtime.cli.build" not in out and "runtime.cli.images" not in out
    assert "runtime.cli.run" in out
