"""The real docker CLI on the verbs test_docker_cli.py leaves out: create + start,
kill, restart, rm -f, the state guards and their messages (dockerd's words),
run --rm of a missing command, logs --since/--until/--tail/-t/-f on the
json-file driver, attach to an -it container, restart policies, container prune,
save/load and image inspect."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import berth_workdir, read_until, start_berthd, wait_until
from tests.privileged.conftest import NetNS
from tests.privileged.images import busybox_rootfs_tar
from tests.privileged.test_docker_cli import DOCKER, DockerCLI


@pytest.fixture(name="docker")
def docker_session(netns: NetNS) -> Iterator[DockerCLI]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        cli = DockerCLI(d)
        cli("import", str(busybox_rootfs_tar(work / "rootfs.tar")), "busybox:latest")
        yield cli


def state(cli: DockerCLI, name: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(cli("inspect", name).stdout)[0]["State"]
    return out


def test_create_start_kill_restart_rm_and_the_state_guards(docker: DockerCLI) -> None:
    cid = docker("create", "--name", "c1", "busybox", "sh", "-c",
                 "echo hello; exec sleep 300").stdout.strip()
    assert state(docker, "c1")["Status"] == "created"
    refused = docker("exec", "c1", "true", check=False)
    assert refused.returncode != 0 and f"Container {cid} is not running" in refused.stderr

    assert docker("start", "c1").stdout == "c1\n"
    assert docker("start", "c1").stdout == "c1\n"       # already running: not an error
    assert f"Container {cid} is not paused" in docker("unpause", "c1", check=False).stderr
    docker("pause", "c1")
    assert f"Container {cid} is already paused" in docker("pause", "c1", check=False).stderr
    docker("unpause", "c1")
    busy = docker("rm", "c1", check=False)
    assert busy.returncode != 0
    assert f"You cannot remove a running container {cid}" in busy.stderr

    first = state(docker, "c1")
    assert docker("restart", "-t", "1", "c1").stdout == "c1\n"
    again = state(docker, "c1")
    assert again["Running"] is True and again["StartedAt"] != first["StartedAt"]
    assert again["Pid"] != first["Pid"]

    assert docker("kill", "c1").stdout == "c1\n"
    assert docker("wait", "c1").stdout == "137\n"
    dead = docker("kill", "c1", check=False)
    assert dead.returncode != 0
    assert f"Cannot kill container: c1: Container {cid} is not running" in dead.stderr
    assert docker("stop", "c1").stdout == "c1\n"        # already stopped: not an error
    docker("start", "c1")
    wait_until(lambda: docker("logs", "c1").stdout == "hello\nhello\nhello\n",
               "one hello per run")
    assert docker("rm", "-f", "c1").stdout == "c1\n"
    assert docker("ps", "-aq").stdout == ""


def test_run_of_a_missing_command(docker: DockerCLI) -> None:
    # With --rm dockerd removes the container whose start failed, and the CLI waits for
    # that removal: it must not hang.
    gone = docker("run", "--rm", "busybox", "nosuchcmd", check=False, timeout=30)
    assert gone.returncode == 127
    assert 'exec: "nosuchcmd": executable file not found in $PATH' in gone.stderr
    assert gone.stderr.count("executable file not found") == 1, gone.stderr  # said once
    assert docker("ps", "-aq").stdout == ""
    kept = docker("run", "--name", "kept", "busybox", "nosuchcmd", check=False, timeout=30)
    assert kept.returncode == 127
    st = state(docker, "kept")
    assert (st["Status"], st["ExitCode"]) == ("created", 127)
    assert "executable file not found" in str(st["Error"])


def test_logs_since_until_tail_timestamps_and_follow(docker: DockerCLI) -> None:
    docker("run", "-d", "--name", "lg", "busybox", "sh", "-c",
           "echo one; echo two >&2; sleep 3; echo three; echo four")
    follow = subprocess.Popen([DOCKER, "-H", docker.daemon.host, "logs", "-f", "lg"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={"PATH": "/usr/bin:/bin",
                                   "DOCKER_CONFIG": str(docker.daemon.data_root / "cli")})
    wait_until(lambda: docker("logs", "lg").stdout == "one\n", "the first line")
    time.sleep(0.5)
    boundary = f"{time.time():.6f}"     # between "two" and "three"
    assert docker("wait", "lg").stdout == "0\n"
    out, err = follow.communicate(timeout=30)    # -f ends when the container does
    assert (out, err) == ("one\nthree\nfour\n", "two\n")

    tail = docker("logs", "--tail", "2", "lg")
    assert (tail.stdout, tail.stderr) == ("three\nfour\n", "")
    since = docker("logs", "--since", boundary, "lg")
    assert (since.stdout, since.stderr) == ("three\nfour\n", "")
    until = docker("logs", "--until", boundary, "lg")
    assert (until.stdout, until.stderr) == ("one\n", "two\n")
    assert docker("logs", "--since", "10m", "lg").stdout == "one\nthree\nfour\n"
    stamped = docker("logs", "-t", "--tail", "1", "lg").stdout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z four\n", stamped), stamped
    assert docker("logs", "--tail", "0", "lg").stdout == ""
    # The berth CLI reads the same, flag for flag.
    for flags in (["--tail", "2"], ["--since", boundary], ["--until", boundary],
                  ["--since", "10m"], ["-f"], ["-n", "1", "-t"]):
        ours = docker.daemon.berth("logs", *flags, "lg")
        theirs = docker("logs", *flags, "lg")
        assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr), flags


def test_attach_to_an_interactive_container(docker: DockerCLI) -> None:
    docker("run", "-dit", "--name", "shell", "busybox", "sh")
    proc = docker.in_terminal("attach shell")
    assert proc.stdin is not None and proc.stdout is not None
    try:
        time.sleep(0.5)     # attached before typing: the first prompt was printed before
        proc.stdin.write(b"echo $((6*7))\n")
        proc.stdin.flush()
        read_until(proc.stdout, b"42")
        proc.stdin.write(b"exit 5\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 5
    finally:
        proc.kill()
    assert docker("wait", "shell").stdout == "5\n"


def test_restart_policy_prune_and_image_save_load(docker: DockerCLI,
                                                  tmp_path: Path) -> None:
    docker("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox",
           "sh", "-c", "exit 3")
    wait_until(lambda: state(docker, "flaky")["Status"] == "exited"
               and json.loads(docker("inspect", "flaky").stdout)[0]["RestartCount"] == 2,
               "two restarts, then exited")
    assert state(docker, "flaky")["ExitCode"] == 3
    # dockerd's events for policy restarts: die, start, die, start, die (no `restart`)
    got = docker("events", "--since", "0", "--until", str(int(time.time()) + 1),
                 "--filter", "container=flaky", "--format", "{{.Action}}").stdout.split()
    assert got == ["create", "start", "die", "start", "die", "start", "die"], got
    flaky = docker("inspect", "-f", "{{.Id}}", "flaky").stdout.strip()
    docker("run", "-d", "--name", "alive", "busybox", "sleep", "300")
    pruned = docker("container", "prune", "-f").stdout
    assert pruned.startswith("Deleted Containers:\n") and flaky in pruned
    assert docker("ps", "-a", "--format", "{{.Names}}").stdout == "alive\n"

    image_id = docker("image", "inspect", "-f", "{{.Id}}", "busybox").stdout.strip()
    docker("save", "-o", str(tmp_path / "bb.tar"), "busybox")
    docker("rm", "-f", "alive")
    docker("rmi", "busybox")
    assert docker("images", "-q").stdout == ""
    assert docker("load", "-i", str(tmp_path / "bb.tar")).stdout == \
        "Loaded image: busybox:latest\n"
    assert docker("image", "inspect", "-f", "{{.Id}}", "busybox").stdout.strip() == image_id


def test_berth_and_docker_give_the_same_exit_status_for_a_failed_start(
        docker: DockerCLI) -> None:
    for argv, status in ((["nosuchcmd"], 127), (["/etc/passwd"], 126)):
        for detach in ([], ["-d"]):
            args = ["run", "--rm", *detach, "busybox", *argv]
            ours = docker.daemon.berth(*args, check=False, timeout=30)
            theirs = docker(*args, check=False, timeout=30)
            assert (ours.returncode, theirs.returncode) == (status, status), (ours, theirs)
            assert ours.stderr.startswith("berth: Error response from daemon: exec: ")
    assert docker("ps", "-aq").stdout == ""


def test_inspect_says_what_the_container_has(docker: DockerCLI) -> None:
    docker("run", "-d", "--name", "facts", "busybox", "sleep", "300")
    shm = int(docker("inspect", "-f", "{{.HostConfig.ShmSize}}", "facts").stdout)
    df = docker("exec", "facts", "df", "-k", "/dev/shm").stdout.splitlines()[1].split()
    assert int(df[1]) * 1024 == shm == 64 << 20
    masked = json.loads(docker("inspect", "-f", "{{json .HostConfig.MaskedPaths}}",
                               "facts").stdout)
    assert "/proc/interrupts" in masked
    # A masked file reads as empty (/dev/null is bound over it); the host's does not.
    assert Path("/proc/interrupts").read_bytes()
    assert docker("exec", "facts", "wc", "-c", "/proc/interrupts").stdout.split()[0] == "0"


def test_events_of_a_run_as_dockerd_sends_them(docker: DockerCLI) -> None:
    since = str(int(time.time()) - 1)
    docker("run", "--rm", "--name", "evx", "--label", "team=a", "busybox", "true")
    docker("run", "-d", "--name", "evy", "busybox", "sleep", "300")
    docker("top", "evy")
    docker("exec", "evy", "echo", "hi")
    docker("rm", "-f", "evy")
    until = str(int(time.time()) + 1)
    time.sleep(1.1)

    def actions(*filters: str) -> list[str]:
        argv = ["events", "--since", since, "--until", until, "--format", "{{.Action}}"]
        for f in filters:
            argv += ["--filter", f]
        return docker(*argv).stdout.splitlines()

    assert actions("container=evx") == ["create", "attach", "start", "die", "destroy"]
    assert actions("container=evy") == ["create", "start", "top", "exec_create: echo hi",
                                        "exec_start: echo hi", "exec_die", "kill", "die",
                                        "destroy"]
    assert actions("container=evy", "event=exec_start") == ["exec_start: echo hi"]
    assert actions("label=team=a", "event=die") == ["die"]
    assert actions("event=oom") == []


DOCKER_DEFAULT_CAPS = 0xa80425fb   # dockerd's default bounding set (oci/caps/defaults.go)


def test_isolation_defaults_and_their_switches(docker: DockerCLI) -> None:
    def status(*flags: str) -> dict[str, str]:
        out = docker("run", "--rm", *flags, "busybox", "cat", "/proc/self/status").stdout
        return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)

    default = status()
    for field in ("CapBnd", "CapEff", "CapPrm"):
        assert int(default[field], 16) == DOCKER_DEFAULT_CAPS, default
    assert int(default["CapAmb"], 16) == 0
    assert (default["NoNewPrivs"], default["Seccomp"]) == ("1", "2")
    added = int(status("--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN")["CapBnd"], 16)
    assert added == (DOCKER_DEFAULT_CAPS | 1 << 12) & ~1          # +NET_ADMIN, -CHOWN
    assert status("--security-opt", "seccomp=unconfined")["Seccomp"] == "0"
    privileged = status("--privileged")
    assert privileged["Seccomp"] == "0" and int(privileged["CapBnd"], 16) > DOCKER_DEFAULT_CAPS
    # Root inside is an unprivileged range outside (a user namespace by default).
    inside, outside, count = docker("run", "--rm", "busybox", "cat",
                                    "/proc/self/uid_map").stdout.split()
    assert (inside, count) == ("0", "65536") and int(outside) >= 65536
    # Own hostname (the short id), pid namespace (PID 1), network namespace.
    cid = docker("run", "-d", "--network", "none", "busybox", "sleep", "300").stdout.strip()
    assert docker("exec", cid, "hostname").stdout == f"{cid[:12]}\n"
    assert docker("exec", cid, "cat", "/proc/1/cmdline").stdout == "sleep\x00300\x00"
    assert docker("exec", cid, "ls", "/sys/class/net").stdout.split() == ["lo"]


def test_system_df_counts_an_image_in_use_as_not_reclaimable(docker: DockerCLI) -> None:
    def reclaimable() -> dict[str, str]:
        out = docker("system", "df", "--format", "{{.Type}}={{.Reclaimable}}").stdout
        return dict(line.split("=", 1) for line in out.splitlines())

    assert reclaimable()["Images"].endswith("(100%)")
    docker("run", "-d", "--name", "user", "busybox", "sleep", "300")
    assert reclaimable()["Images"] == "0B (0%)"


def test_rename_refusals_groups_and_bare_env_as_docker(docker: DockerCLI) -> None:
    a = docker("run", "-d", "--name", "one", "busybox", "sleep", "300").stdout.strip()
    docker("run", "-d", "--name", "two", "busybox", "sleep", "300")
    taken = docker("rename", "two", "one", check=False)
    assert taken.returncode != 0
    assert (f'Conflict. The container name "/one" is already in use by container "{a}"'
            in taken.stderr)
    same = docker("rename", "two", "two", check=False)
    assert same.returncode != 0
    assert "Renaming a container with the same name as its current name" in same.stderr
    # The primary group is among the supplementary ones, as dockerd sets them.
    assert docker("run", "--rm", "busybox", "id").stdout == \
        "uid=0(root) gid=0(root) groups=0(root)\n"
    assert docker("run", "--rm", "-u", "1234:55", "busybox", "id").stdout == \
        "uid=1234 gid=55 groups=55\n"
    # -e KEY with KEY unset on the client: unset in the container, not empty.
    assert docker("run", "--rm", "-e", "BERTH_UNSET_VAR", "-e", "B=1", "busybox", "sh", "-c",
                  "echo ${BERTH_UNSET_VAR-unset} $B").stdout == "unset 1\n"


def test_a_limit_the_host_cannot_enforce_is_warned_about(docker: DockerCLI) -> None:
    enforced = docker("info", "--format", "{{.MemoryLimit}}").stdout.strip() == "true"
    r = docker("run", "--rm", "--memory", "64m", "busybox", "true")
    warned = "WARNING: memory limit not applied: the memory cgroup controller is not available"
    # (on the hybrid development hosts memory is bound to cgroup v1; unified hosts have it)
    assert (warned in r.stderr) is (not enforced), r.stderr


def test_stats_stream_of_a_stopped_container_stays_open_until_it_is_removed(
        docker: DockerCLI) -> None:
    from tests.privileged.berthd import UnixHTTPConnection

    cid = docker("run", "-d", "--name", "brief", "busybox", "true").stdout.strip()
    assert docker("wait", "brief").stdout == "0\n"
    conn = UnixHTTPConnection(docker.daemon.socket)
    try:
        conn.request("GET", f"/v1.47/containers/{cid}/stats?stream=1")
        resp = conn.getresponse()
        first, second = json.loads(resp.readline()), json.loads(resp.readline())
        assert first["id"] == second["id"] == cid     # zeros, as `docker stats` shows them
        assert second["pids_stats"]["current"] == 0
        docker("rm", "brief")
        assert resp.read() == b""                     # removed: the stream ends
    finally:
        conn.close()


def test_sizes_in_ps_and_inspect(docker: DockerCLI) -> None:
    docker("run", "-d", "--name", "writer", "busybox", "sh", "-c",
           "head -c 100000 /dev/zero > /f; echo written; exec sleep 300")
    wait_until(lambda: docker("logs", "writer").stdout == "written\n", "the file written")
    image = int(docker("image", "inspect", "-f", "{{.Size}}", "busybox").stdout)
    assert docker("inspect", "-s", "-f", "{{.SizeRw}} {{.SizeRootFs}}", "writer").stdout == \
        f"100000 {100000 + image}\n"
    assert docker("ps", "-s", "--format", "{{.Size}}").stdout.startswith("100kB (virtual ")
    assert docker.daemon.berth("inspect", "-s", "-f", "{{.SizeRw}}", "writer").stdout == \
        "100000\n"


def test_clients_that_leave_early_leave_no_traceback(docker: DockerCLI) -> None:
    docker("run", "-d", "--name", "quick", "busybox", "sleep", "0.5")   # drops its wait
    assert docker("wait", "quick").stdout == "0\n"
    docker("run", "-d", "--name", "talk", "busybox", "sh", "-c",
           "while :; do echo x; sleep 0.1; done")
    for verb in (["logs", "-f", "talk"], ["events"], ["stats", "talk"]):
        proc = subprocess.Popen([DOCKER, "-H", docker.daemon.host, *verb],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={"PATH": "/usr/bin:/bin",
                                     "DOCKER_CONFIG": str(docker.daemon.data_root / "cli")})
        time.sleep(1.5)
        proc.kill()       # the client goes away mid-stream
        proc.wait()
    docker("rm", "-f", "talk")
    time.sleep(1.5)       # a stream would notice on its next write
    log = docker.daemon.log_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


def test_ps_filters_before_since_network_volume(docker: DockerCLI) -> None:
    docker("create", "--name", "first", "busybox", "true")
    docker("create", "--name", "second", "-v", "vol1:/data", "busybox", "true")
    docker("create", "--name", "third", "--network", "host", "busybox", "true")

    def names(*filters: str) -> list[str]:
        argv = ["ps", "-a", "--format", "{{.Names}}"]
        for f in filters:
            argv += ["--filter", f]
        return sorted(docker(*argv).stdout.split())

    assert names("before=third") == ["first", "second"]
    assert names("since=first") == ["second", "third"]
    assert names("volume=vol1") == names("volume=/data") == ["second"]
    assert names("network=host") == ["third"]
    bad = docker("ps", "--filter", "colour=red", check=False)
    assert bad.returncode != 0 and "Invalid filter 'colour'" in bad.stderr


def test_a_paused_container_refuses_exec_and_rm_in_dockers_words(docker: DockerCLI) -> None:
    cid = docker("run", "-d", "--name", "frozen", "busybox", "sleep", "300").stdout.strip()
    docker("pause", "frozen")
    ex = docker("exec", "frozen", "true", check=False)
    assert ex.returncode != 0
    assert "Container frozen is paused, unpause the container before exec" in ex.stderr
    rm = docker("rm", "frozen", check=False)
    assert rm.returncode != 0
    assert (f"You cannot remove a paused container {cid}. Unpause and then stop the "
            "container before attempting removal or force remove") in rm.stderr
    assert docker("stop", "-t", "1", "frozen").stdout == "frozen\n"    # stop thaws and kills
    assert docker("wait", "frozen").stdout == "137\n"


def test_container_prune_filters(docker: DockerCLI) -> None:
    keep = docker("create", "--name", "keep", "-l", "keep=1", "busybox", "true").stdout.strip()
    drop = docker("create", "--name", "drop", "busybox", "true").stdout.strip()
    assert docker("container", "prune", "-f", "--filter", "until=1h").stdout == \
        "Total reclaimed space: 0B\n"                   # both are younger than an hour
    out = docker("container", "prune", "-f", "--filter", "label!=keep=1").stdout
    assert drop in out and keep not in out
    out = docker("container", "prune", "-f", "--filter", "label=keep").stdout
    assert keep in out
    assert docker("ps", "-aq").stdout == ""


def test_volume_prune_label_filters(docker: DockerCLI) -> None:
    docker("volume", "create", "--label", "keep=1", "kept")
    docker("volume", "create", "spare")
    out = docker("volume", "prune", "-a", "-f", "--filter", "label!=keep=1").stdout
    assert "spare" in out and "kept" not in out
    assert docker("volume", "ls", "-q").stdout.split() == ["kept"]


@pytest.mark.parametrize("client", ["berth", "docker"])
def test_ctrl_p_ctrl_q_detaches_and_the_container_runs_on(docker: DockerCLI,
                                                          client: str) -> None:
    from tests.privileged.berthd import BERTH, ROOT

    program = " ".join(BERTH) if client == "berth" else DOCKER
    proc = docker.in_terminal("run -it --name stay busybox sh", cwd=ROOT, client=program)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        read_until(proc.stdout, b"# ")
        proc.stdin.write(b"echo $((6*7))\n")
        proc.stdin.flush()
        read_until(proc.stdout, b"42")
        proc.stdin.write(b"\x10\x11")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert state(docker, "stay")["Running"] is True
    docker("rm", "-f", "stay")
