"""Docker JSON shapes of containers, both ways, without a daemon."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runtime.api.container_views import (
    create_request,
    inspect_json,
    memory_swap,
    port_list,
    rfc3339,
    stats_json,
    status_text,
    summary_json,
    unenforced_limits,
)
from runtime.api.errors import BadRequest
from runtime.api.exec import exec_request
from runtime.api.streams import encode_entry, frame, parse_nanos
from runtime.cgroups import Stats
from runtime.container.spec import RestartPolicyName, build_spec
from runtime.container.state import State, Status
from runtime.logs import LogEntry
from runtime.oci import ImageConfig
from runtime.rootfs import Volume, VolumeKind
from runtime.store.containers import ContainerRecord

CID = "ab" * 32


def test_docker_create_body_to_engine_request() -> None:
    body = {
        "Image": "busybox", "Cmd": ["sh", "-c", "echo hi"], "Env": ["A=1"], "User": "1000",
        "WorkingDir": "/srv", "Hostname": "box", "Tty": True, "OpenStdin": True,
        "Labels": {"tier": "web"}, "StopSignal": "SIGINT", "StopTimeout": 3,
        "Volumes": {"/anon": {}, "/bound": {}},
        "HostConfig": {
            "Binds": ["/host:/bound:ro,z", "named:/named"], "Memory": 64 << 20,
            "NanoCpus": 500_000_000, "PidsLimit": 32, "BlkioWeight": 300,
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
            "AutoRemove": True, "ReadonlyRootfs": True, "NetworkMode": "host",
            "CapAdd": ["NET_ADMIN"], "CapDrop": ["CHOWN"],
            "SecurityOpt": ["seccomp:unconfined"], "Tmpfs": {"/run": "size=1m"},
            "UsernsMode": "host"},
    }
    req = create_request(body, "web", {"NetworkMode": "host"})
    assert (req.image, req.name, req.cmd) == ("busybox", "web", ("sh", "-c", "echo hi"))
    assert (req.user, req.working_dir, req.hostname) == ("1000", "/srv", "box")
    assert req.tty and req.open_stdin and req.read_only and req.auto_remove
    assert req.memory == 64 << 20 and req.nano_cpus == 500_000_000
    assert req.pids_limit == 32 and req.io_weight == 300
    assert req.restart_policy.name is RestartPolicyName.ON_FAILURE
    assert req.restart_policy.maximum_retry_count == 2
    assert req.network_mode == "host" and req.seccomp == "unconfined"
    assert req.userns is False
    vols = {(v.source, v.destination, v.read_only) for v in req.volumes}
    # /bound is bound, so it is not also an anonymous volume (docker-py lists both).
    assert vols == {("/host", "/bound", True), ("named", "/named", False), ("", "/anon", False)}
    assert req.tmpfs == ("/run:size=1m",)


def test_create_defaults_and_refusals() -> None:
    req = create_request({"Image": "busybox"}, None, {})
    assert req.cmd is None and req.network_mode == "bridge" and req.name is None
    assert create_request({"Image": "b", "Entrypoint": [""]}, None, {}).entrypoint == ()
    assert create_request({"Image": "b", "HostConfig": {"CpuQuota": 50000, "CpuPeriod": 100000}},
                          None, {}).nano_cpus == 500_000_000
    privileged = create_request({"Image": "b", "HostConfig": {"Privileged": True}}, None, {})
    assert "ALL" in privileged.cap_add and privileged.seccomp == "unconfined"
    for bad in ({}, {"Image": 3}, {"Image": "b", "Cmd": [1]},
                {"Image": "b", "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}},
                {"Image": "b", "HostConfig": {"Mounts": [{"Type": "npipe", "Target": "/x"}]}},
                {"Image": "b", "HostConfig": {"Binds": ["v:/x:zz"]}},
                {"Image": "b", "HostConfig": {"Binds": ["v:/x:ro,rw"]}}):
        with pytest.raises(BadRequest):
            create_request(bad, None, {})
    with pytest.raises(BadRequest, match="No exec command"):
        exec_request({"Cmd": []})
    assert exec_request({"Cmd": "ls", "Tty": True}).cmd == ("ls",)


def record(state: State, tty: bool = False) -> ContainerRecord:
    req = create_request({"Image": "busybox", "Cmd": ["sleep", "9"], "Tty": tty,
                          "Labels": {"a": "b"}}, "web", {"ExposedPorts": ["80/tcp"]})
    spec = build_spec(req, ImageConfig(env=("PATH=/bin",)), CID)
    return ContainerRecord(
        id=CID, name="web", created=1_700_000_000.25, image_ref="busybox",
        image_id="sha256:" + "cd" * 32, layers=("/l/1", "/l/2"), request=req, spec=spec,
        state=state, uid_base=100000,
        volumes=(Volume("/var/lib/berth/volumes/v1/_data", "/data", False, VolumeKind.VOLUME),),
        network={"ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}]},
                 "ip_address": "10.88.0.2", "networks": {"bridge": {"IPAddress": "10.88.0.2"}}})


def test_inspect_shape() -> None:
    running = State(status=Status.RUNNING, pid=42, started_at=1_700_000_001.0)
    doc = inspect_json(record(running), log_path="/x.log", log_type="json-file",
                       exec_ids=["e1"])
    json.dumps(doc)  # all JSON
    assert doc["Id"] == CID and doc["Name"] == "/web" and doc["Image"].startswith("sha256:")
    assert doc["Path"] == "sleep" and doc["Args"] == ["9"]
    assert doc["Created"] == "2023-11-14T22:13:20.250000000Z"
    state = doc["State"]
    assert (state["Status"], state["Running"], state["Paused"], state["Pid"]) == \
        ("running", True, False, 42)
    assert state["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert doc["Config"]["Image"] == "busybox" and doc["Config"]["Labels"] == {"a": "b"}
    assert doc["Config"]["Cmd"] == ["sleep", "9"] and "HOSTNAME=abababababab" in \
        doc["Config"]["Env"]
    assert doc["HostConfig"]["UsernsMode"] == "" and doc["ExecIDs"] == ["e1"]
    assert doc["NetworkSettings"]["IPAddress"] == "10.88.0.2"
    assert doc["Mounts"] == [{"Type": "volume", "Name": "v1", "Source":
                              "/var/lib/berth/volumes/v1/_data", "Destination": "/data",
                              "Driver": "local", "Mode": "z", "RW": True, "Propagation": ""}]


def test_ps_summary_and_status_texts() -> None:
    now = 1_700_000_100.0
    paused = State(status=Status.PAUSED, pid=1, started_at=now - 130)
    s = summary_json(record(paused), now)
    assert s["Names"] == ["/web"] and s["Command"] == "sleep 9" and s["State"] == "paused"
    assert s["Status"] == "Up 2 minutes (Paused)"
    assert s["Ports"] == [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768,
                           "Type": "tcp"}]
    exited = State(status=Status.EXITED, exit_code=137, finished_at=now - 5)
    assert status_text(exited, now) == "Exited (137) 5 seconds ago"
    assert status_text(State(), now) == "Created"
    assert port_list({"53/udp": None}) == [{"PrivatePort": 53, "Type": "udp"}]


def test_stats_shape_feeds_dockers_cpu_percent() -> None:
    def sample(cpu_usec: int) -> Stats:
        return Stats(memory_current=10 << 20, memory_max=None, memory_stat={"anon": 1},
                     oom_kills=0, cpu_usage_usec=cpu_usec, cpu_user_usec=cpu_usec,
                     cpu_system_usec=0, pids_current=3, pids_max=64, io_read_bytes=5,
                     io_write_bytes=6)

    rec = record(State(status=Status.RUNNING, pid=0))
    doc = stats_json(rec, sample(2_000_000), sample(1_000_000), 4_000_000_000, 2_000_000_000,
                     2.0, 1.0)
    cpu, pre = doc["cpu_stats"], doc["precpu_stats"]
    delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    assert delta == 1_000_000_000
    assert cpu["system_cpu_usage"] - pre["system_cpu_usage"] == 2_000_000_000
    assert doc["pids_stats"] == {"current": 3, "limit": 64}
    assert doc["memory_stats"]["usage"] == 10 << 20 and doc["memory_stats"]["limit"] > 0
    assert doc["name"] == "/web" and rfc3339(2.0) == "1970-01-01T00:00:02.000000000Z"


def test_stream_framing() -> None:
    e = LogEntry("stderr", 1_700_000_000_000_000_001, b"oops\n")
    assert frame("stdout", b"hi") == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
    assert encode_entry(e, tty=False, timestamps=False) == b"\x02\x00\x00\x00\x00\x00\x00\x05oops\n"
    assert encode_entry(e, tty=True, timestamps=True) == \
        b"2023-11-14T22:13:20.000000001Z oops\n"
    assert parse_nanos("1700000000.5", "since") == 1_700_000_000_500_000_000
    assert parse_nanos("0", "until") is None
    with pytest.raises(BadRequest):
        parse_nanos("yesterday", "since")


def test_host_config_fields_berthd_ignores_are_warned_about() -> None:
    from runtime.api.container_views import ignored_fields

    docker_cli_defaults = {"HostConfig": {"ShmSize": 0, "IpcMode": "", "OomKillDisable": False,
                                          "Ulimits": None, "Sysctls": {}}}
    assert ignored_fields(docker_cli_defaults) == []
    warned = ignored_fields({"HostConfig": {"ShmSize": 1 << 20, "Init": True,
                                            "Ulimits": [{"Name": "nofile"}]}})
    assert [w.split()[4] for w in warned] == ["HostConfig.Ulimits:", "HostConfig.ShmSize:",
                                             "HostConfig.Init:"]


def test_memory_swap_as_dockerd_reports_it_and_refuses_it() -> None:
    # No --memory-swap: twice the memory (swap up to the memory limit, as the cgroup has).
    assert memory_swap(64 << 20, None, swap_limit=True) == 128 << 20
    assert memory_swap(64 << 20, 96 << 20, swap_limit=True) == 96 << 20
    assert memory_swap(64 << 20, -1, swap_limit=True) == -1
    assert memory_swap(None, None, swap_limit=True) == 0
    # Swap not limitable here: "Memory limited without swap".
    assert memory_swap(64 << 20, None, swap_limit=False) == -1
    req = create_request({"Image": "b", "HostConfig": {"Memory": 64 << 20, "MemorySwap": 0}},
                         None, {})
    running = State(status=Status.RUNNING, pid=42, started_at=1.0)
    rec = record(running)
    doc = inspect_json(dataclasses.replace(rec, request=req), log_path="", log_type="json-file")
    assert (doc["HostConfig"]["Memory"], doc["HostConfig"]["MemorySwap"]) == \
        (64 << 20, 128 << 20)
    # dockerd's other HostConfig fields are there, with what berthd really does.
    assert doc["HostConfig"]["ShmSize"] == 64 << 20
    assert "/proc/kcore" in doc["HostConfig"]["MaskedPaths"]
    assert doc["HostConfig"]["CgroupnsMode"] == "private"
    for hc, message in (({"Memory": 1 << 20}, "Minimum memory limit allowed is 6MB"),
                        ({"Memory": 64 << 20, "MemorySwap": 32 << 20},
                         "Minimum memoryswap limit should be larger than memory limit"),
                        ({"MemorySwap": 64 << 20}, "You should always set the Memory limit")):
        with pytest.raises(BadRequest, match=message):
            create_request({"Image": "b", "HostConfig": hc}, None, {})


def test_limits_a_host_cannot_enforce_are_warned_about_at_create() -> None:
    req = create_request({"Image": "b", "HostConfig": {"Memory": 64 << 20, "PidsLimit": 9}},
                         None, {})
    warned = unenforced_limits(req, ("memory", "cpu", "pids", "io"), "/sys/fs/cgroup/x")
    assert warned == [
        "memory limit not applied: the memory cgroup controller is not available under "
        "/sys/fs/cgroup/x",
        "pids limit not applied: the pids cgroup controller is not available under "
        "/sys/fs/cgroup/x"]
    assert unenforced_limits(req, (), "/sys/fs/cgroup/x") == []
