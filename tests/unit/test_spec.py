"""Docker's rules for building what a container runs from request + image config."""

from __future__ import annotations

import pytest

from runtime.container import caps
from runtime.container.errors import InvalidRequest
from runtime.container.spec import (
    DEFAULT_PATH,
    CreateRequest,
    RestartPolicy,
    RestartPolicyName,
    VolumeRequest,
    build_spec,
    signal_number,
    validate_name,
)
from runtime.container.user import UserError, resolve
from runtime.oci import ImageConfig

CID = "abcdef0123456789" * 4
IMG = ImageConfig(env=("PATH=/usr/bin:/bin", "LANG=C", "A=1"), cmd=("nginx", "-g", "daemon off;"),
                  entrypoint=("/docker-entrypoint.sh",), working_dir="/srv", user="www",
                  stop_signal="SIGQUIT")


def test_cmd_replaces_image_cmd_and_keeps_entrypoint() -> None:
    s = build_spec(CreateRequest(image="x", cmd=("sh",)), IMG, CID)
    assert s.args == ("/docker-entrypoint.sh", "sh")


def test_entrypoint_override_drops_image_cmd() -> None:
    s = build_spec(CreateRequest(image="x", entrypoint=("/bin/echo",)), IMG, CID)
    assert s.args == ("/bin/echo",)
    s = build_spec(CreateRequest(image="x", entrypoint=("/bin/echo",), cmd=("hi",)), IMG, CID)
    assert s.args == ("/bin/echo", "hi")


def test_image_defaults_apply_when_request_is_silent() -> None:
    s = build_spec(CreateRequest(image="x"), IMG, CID)
    assert s.args == ("/docker-entrypoint.sh", "nginx", "-g", "daemon off;")
    assert (s.working_dir, s.user, s.stop_signal, s.hostname) == ("/srv", "www", "SIGQUIT",
                                                                  CID[:12])


def test_env_merge_request_overrides_image_by_key_and_adds_hostname() -> None:
    s = build_spec(CreateRequest(image="x", env=("A=2", "B=3"), hostname="web"), IMG, CID)
    assert s.env == ("PATH=/usr/bin:/bin", "LANG=C", "A=2", "HOSTNAME=web", "B=3")
    # A bare KEY (docker -e KEY, KEY unset on the client) leaves KEY unset, even the
    # image's.
    bare = build_spec(CreateRequest(image="x", env=("A", "C")), IMG, CID).env
    assert not any(e.split("=")[0] in ("A", "C") for e in bare), bare


def test_tty_gets_term_xterm_unless_set() -> None:
    assert "TERM=xterm" in build_spec(CreateRequest(image="x", tty=True), IMG, CID).env
    s = build_spec(CreateRequest(image="x", tty=True, env=("TERM=vt100",)), IMG, CID)
    assert "TERM=vt100" in s.env and "TERM=xterm" not in s.env
    assert not any(e.startswith("TERM=") for e in build_spec(CreateRequest(image="x"), IMG,
                                                             CID).env)


def test_default_path_is_added_when_nobody_sets_one() -> None:
    s = build_spec(CreateRequest(image="x", cmd=("true",)), ImageConfig(), CID)
    assert s.env[0] == DEFAULT_PATH


def test_bad_requests_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="No command specified"):
        build_spec(CreateRequest(image="x"), ImageConfig(), CID)
    with pytest.raises(InvalidRequest, match="absolute path"):
        build_spec(CreateRequest(image="x", working_dir="rel"), IMG, CID)
    with pytest.raises(InvalidRequest, match="invalid signal"):
        build_spec(CreateRequest(image="x", stop_signal="SIGNOPE"), IMG, CID)
    with pytest.raises(InvalidRequest, match="Invalid container name"):
        validate_name("bad name")


def test_restart_policy_and_volume_and_signal_parsing() -> None:
    assert RestartPolicy.parse("on-failure:3") == RestartPolicy(RestartPolicyName.ON_FAILURE, 3)
    assert RestartPolicy.parse("unless-stopped").name is RestartPolicyName.UNLESS_STOPPED
    with pytest.raises(InvalidRequest):
        RestartPolicy.parse("always:3")
    with pytest.raises(InvalidRequest):
        RestartPolicy.parse("sometimes")
    assert VolumeRequest.parse("/h:/c:ro") == VolumeRequest("/h", "/c", True)
    assert not VolumeRequest.parse("data:/c").is_bind
    assert VolumeRequest.parse("/anon") == VolumeRequest("", "/anon")
    with pytest.raises(InvalidRequest):
        VolumeRequest.parse("/h:/c:rx")
    assert signal_number("TERM") == signal_number("SIGTERM") == signal_number("15") == 15


def test_caps_default_add_drop_all() -> None:
    default = caps.resolve()
    assert len(default) == 14 and caps.CAPS["SYS_ADMIN"] not in default
    assert caps.CAPS["SYS_ADMIN"] in caps.resolve(cap_add=["CAP_SYS_ADMIN"])
    assert caps.CAPS["NET_RAW"] not in caps.resolve(cap_drop=["net_raw"])
    assert caps.resolve(cap_add=["KILL"], cap_drop=["ALL"]) == (caps.CAPS["KILL"],)
    with pytest.raises(InvalidRequest):
        caps.resolve(cap_add=["NOPE"])


PASSWD = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n"
GROUP = "root:x:0:\nbob:x:1000:\nstaff:x:50:bob,eve\n"


def test_user_resolution_against_the_containers_files() -> None:
    assert resolve("", PASSWD, GROUP).uid == 0
    bob = resolve("bob", PASSWD, GROUP)
    assert (bob.uid, bob.gid, bob.groups, bob.home) == (1000, 1000, (1000, 50), "/home/bob")
    assert resolve("1000:50", PASSWD, GROUP).groups == (50,)
    assert resolve("1000:50", PASSWD, GROUP).gid == 50
    assert resolve("4242", PASSWD, GROUP).uid == 4242
    with pytest.raises(UserError, match="unable to find user nobody"):
        resolve("nobody", PASSWD, GROUP)
