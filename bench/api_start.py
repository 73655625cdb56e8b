"""Start latency through the API and end to end, side by side with crun, podman, docker.

1. API: a warm berthd (own data/exec roots, own network namespace), busybox
   `/bin/true` with `--network none`: create + start + exit seen (the wait is
   registered before the start), as a client of the unix socket, against
   `crun run` of the same rootfs and command (crun creates, starts, waits
   and deletes), each timed per run. crun runs as MACHINE-NOTES says: in a
   private mount namespace with the unified cgroup.controllers hidden. Two
   isolations on each side, so that three ratios compare like with like:
   (a) berth as shipped vs bare `crun spec`'s bundle (the issue's target);
   (b) berth with crun's isolation (no user namespace, no seccomp:
   `--userns host --security-opt seccomp=unconfined`) vs bare crun;
   (c) berth as shipped vs crun given berth's isolation (a user namespace
   mapping and Docker's seccomp allow-list).
2. CLI: `berth run --rm busybox true` end to end (a new CLI process each
   time) against `podman run --rm` and `docker run --rm` (Debian's dockerd
   with a private data root in the same namespace), all `--network none`.

Medians of --runs runs each (after --warmup runs), and the ratio to each peer.

Run state on tmpfs for every side, as each runtime has it when deployed
(/run is a tmpfs): berthd's exec root, crun's state root, dockerd's exec
root and podman's runroot all live on one tmpfs mounted for the run
(`run_tmpfs`); data roots (images, upper dirs, records) stay on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.client import Client, Endpoint
from runtime.run import CommandError, run

DESCRIPTION = "start of /bin/true: API vs crun run; berth run --rm vs podman and docker"
IMAGE = "busybox:bench"
DOCKER = "/usr/local/bin/docker"
ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=30, help="timed runs per side (30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"rounds the sides alternate in ({ROUNDS})")
    parser.add_argument("--no-podman", action="store_true", help="skip podman")
    parser.add_argument("--no-docker", action="store_true", help="skip docker")
    parser.add_argument("--cli-site", action="store_true",
                        help="run the berth CLI with the site module (this checkout's "
                             "editable-install hook included)")


def timed(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# --- the pieces the bench starts ------------------------------------------------------


@contextmanager
def run_tmpfs(path: Path) -> Iterator[Path]:
    """A tmpfs at `path` for the run state of every side (deployed, each has it under
    /run, a tmpfs); lazily unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", "mode=0711,size=1g", "berth-bench", str(path)])
    try:
        yield path
    finally:
        run(["umount", "-l", str(path)], check=False)


@contextmanager
def netns(prefix: str = "berth-bench") -> Iterator[str]:
    """A network namespace made for the run (loopback up); its path."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        yield f"/run/netns/{name}"
    finally:
        run(["ip", "netns", "delete", name], check=False)


@contextmanager
def inside_netns(prefix: str) -> Iterator[None]:
    """This thread (and what it starts) in a network namespace made for the run, and back
    in its own at the end: the benches that run an engine in-process."""
    from runtime.sys import Namespace
    from runtime.sys.libc import LibcSys

    sys_ = LibcSys()
    with netns(prefix) as path:
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sys_.setns(target, Namespace.NET)
            try:
                yield
            finally:
                sys_.setns(own, Namespace.NET)
        finally:
            os.close(own)
            os.close(target)


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            Client(Endpoint(unix_path=str(path)), version="1.41").call("GET", "/_ping").read()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {path}")


@contextmanager
def start_berthd(ns: str, work: Path) -> Iterator[Path]:
    sock = work / "berthd.sock"
    log = (work / "berthd.log").open("wb")
    proc = subprocess.Popen(
        ["nsenter", f"--net={ns}", "--", sys.executable, "-m", "runtime.daemon",
         "--data-root", str(work / "data"), "--exec-root", str(work / "run" / "berthd"),
         "-H", f"unix://{sock}", "--bridge", "none", "--log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_socket(sock, proc, "berthd")
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@contextmanager
def start_dockerd(ns: str, work: Path) -> Iterator[Path]:
    sock = work / "dockerd.sock"
    log = (work / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        ["nsenter", f"--net={ns}", "--", "dockerd", "--data-root", str(work / "docker"),
         "--exec-root", str(work / "run" / "docker"), "-H", f"unix://{sock}",
         "--pidfile", str(work / "dockerd.pid"), "--iptables=false", "--ip-forward=false",
         "--ip-masq=false", "--bridge=none", "--storage-driver=overlay2"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, proc, "dockerd")
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def podman_env(work: Path) -> dict[str, str]:
    conf = work / "containers.conf"
    conf.write_text('[containers]\nnetns="none"\n'
                    'default_ulimits=["nofile=20000:20000","nproc=32768:32768"]\n'
                    '[engine]\nruntime="runc"\ncgroup_manager="cgroupfs"\n'
                    'events_logger="file"\n')
    storage = work / "storage.conf"
    storage.write_text(f'[storage]\ndriver="overlay"\ngraphroot="{work}/podman"\n'
                       f'runroot="{work}/run/podman"\n')
    return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


# --- the sides ------------------------------------------------------------------------


# berth with the isolation bare `crun spec` has: no user namespace, no seccomp filter
# (the "berth bare" side of bench.density, in the API's terms).
CRUN_ISOLATION: dict[str, object] = {"UsernsMode": "host", "SecurityOpt": ["seccomp=unconfined"]}


class ApiStart:
    """One timed run: create, register the wait, start, see the exit."""

    def __init__(self, sock: Path, host_config: dict[str, object] | None = None) -> None:
        self.client = Client(Endpoint(unix_path=str(sock)))
        self.waiter = Client(Endpoint(unix_path=str(sock)))
        self.body = {"Image": IMAGE, "Cmd": ["/bin/true"],
                     "HostConfig": {"NetworkMode": "none", **(host_config or {})}}
        self.created: list[str] = []

    def __call__(self) -> None:
        cid = self.client.post("/containers/create", None, self.body)["Id"]
        wait = self.waiter.call("POST", f"/containers/{cid}/wait", {"condition": "next-exit"})
        self.client.post(f"/containers/{cid}/start")
        result = wait.json()
        if result["StatusCode"] != 0:
            raise RuntimeError(f"container {cid[:12]} exited {result}")
        self.created.append(cid)

    def cleanup(self) -> None:
        for cid in self.created:
            self.client.call("DELETE", f"/containers/{cid}", {"force": 1}).read()


def crun_bundle(work: Path, rootfs_tar: Path) -> Path:
    bundle = work / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    run(["tar", "-xf", str(rootfs_tar), "-C", str(bundle / "rootfs")])
    run(["crun", "spec"], cwd=bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    (work / "empty").touch()
    return bundle


CRUN_UID_BASE = 1_500_000_000   # the isolated crun side's mapped root (unused by berthd)


def crun_isolated_bundle(work: Path, bundle: Path) -> Path:
    """The same bundle with berth's default isolation, which bare `crun spec` lacks: a
    user namespace (container root mapped to an unprivileged range) and Docker's
    default seccomp allow-list (runtime/seccomp.py's rules for the default
    capabilities, in OCI form). crun compiles its filter at every run; berthd
    compiles it once."""
    from runtime import seccomp
    from runtime.container import caps

    out = work / "bundle-isolated"
    out.mkdir()
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["path"] = str(bundle / "rootfs")
    cfg["linux"]["namespaces"].append({"type": "user"})
    mapping = [{"containerID": 0, "hostID": CRUN_UID_BASE, "size": 65536}]
    cfg["linux"]["uidMappings"] = cfg["linux"]["gidMappings"] = mapping
    default_caps = caps.resolve((), ())
    allowed = set(seccomp.DEFAULT_ALLOW)
    for cap, calls in seccomp.CAP_GATED.items():
        if cap in default_caps:
            allowed.update(calls)
    allowed.discard("clone")
    cfg["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"},
            # moby: clone without namespace flags only; clone3 -> ENOSYS (glibc falls back)
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": list(seccomp.ENOSYS_UNLESS_SYS_ADMIN), "action": "SCMP_ACT_ERRNO",
             "errnoRet": 38}]}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def crun_times(work: Path, bundle: Path, runs: int, warmup: int) -> list[float]:
    # The timing loop runs inside the private mount namespace, so only `crun run`
    # itself is timed, not the unshare around it.
    script = (f"mount --bind {work / 'empty'} /sys/fs/cgroup/unified/cgroup.controllers && "
              f"exec {sys.executable} -m bench.api_start --crun-loop {bundle} "
              f"{work / 'run' / 'crun'} {runs} {warmup}")
    out = run(["unshare", "-m", "sh", "-c", script], cwd=ROOT).stdout
    return [float(x) for x in json.loads(out)]


def crun_loop(bundle: str, state: str, runs: int, warmup: int) -> None:
    n = 0

    def once() -> None:
        nonlocal n
        n += 1
        run(["crun", "--root", state, "run", "--bundle", bundle, f"b{os.getpid()}-{n}"])

    print(json.dumps(timed(once, runs, warmup)))


# What pip writes for a console-script entry point (berth = "runtime.cli:main").
CONSOLE_SCRIPT = """import sys
from runtime.cli import main
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit(main())
"""


def cli_run(argv: list[str], env: dict[str, str] | None = None) -> Callable[[], None]:
    def once() -> None:
        run(argv, env=env, cwd=ROOT)
    return once


# --- report ---------------------------------------------------------------------------


def row(name: str, times: list[float]) -> float:
    med = statistics.median(times)
    print(f"  {name:<34}{med * 1000:9.1f} ms  (min {min(times) * 1000:.1f}, "
          f"max {max(times) * 1000:.1f})")
    return med


# Sides alternate in rounds: a shared machine's load drifts during a run (and on these
# 2-core machines other sessions' work comes and goes within seconds), so the more
# rounds, the more alike the conditions each side is measured in.
ROUNDS = 10

Side = Callable[[int, int], list[float]]   # (runs, warmup runs) -> seconds per run


def interleaved(sides: dict[str, Side], runs: int, warmup: int,
                rounds: int = ROUNDS) -> dict[str, float]:
    """Each side's median over `runs`, measured in alternating rounds (warm-up runs in
    the first round only)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    per_round = max(1, runs // rounds)
    for r in range(rounds):
        for name, measure in sides.items():
            times[name] += measure(per_round, warmup if r == 0 else 0)
    return {name: row(name, t) for name, t in times.items()}


def main(args: argparse.Namespace) -> int:
    from tests.privileged.images import busybox_rootfs_tar

    # An installed package ships compiled modules; this checkout may not have them yet
    # (PYTHONDONTWRITEBYTECODE): compile once so the CLI runs are not timing the compiler.
    run([sys.executable, "-m", "compileall", "-q", str(ROOT / "runtime")])
    work = Path(tempfile.mkdtemp(prefix="berth-bench-start-"))
    work.chmod(0o711)
    try:
        tar = busybox_rootfs_tar(work / "busybox.tar")
        with run_tmpfs(work / "run"), netns() as ns, start_berthd(ns, work) as sock:
            host = f"unix://{sock}"
            # The CLI as installed: the console script pip writes for the `berth` entry
            # point (no runpy, as `-m` would add), this checkout on the path as an
            # installed package would be. -S: no site module. This checkout is an
            # editable install whose import hook (pulled in by site) costs more than
            # the whole CLI; an installed berth has no such hook, and the CLI needs
            # nothing but the standard library.
            script = work / "berth"
            script.write_text(CONSOLE_SCRIPT)
            berth = [sys.executable, *([] if args.cli_site else ["-S"]), str(script),
                     "-H", host]
            cli_env = {**os.environ, "PYTHONPATH": str(ROOT)}
            run([*berth, "import", str(tar), IMAGE], env=cli_env)
            print(f"start of /bin/true, busybox, --network none; median of {args.runs}, "
                  f"sides alternating in {args.rounds} rounds; load average "
                  f"{os.getloadavg()[0]:.1f} (2 cores)")
            print("1. through the API from a warm daemon vs crun run")
            start = ApiStart(sock)
            bare = ApiStart(sock, CRUN_ISOLATION)
            bundle = crun_bundle(work, tar)
            isolated = crun_isolated_bundle(work, bundle)
            first = interleaved({
                "berthd API create+start+exit": lambda n, w: timed(start, n, w),
                "berthd API, crun's isolation": lambda n, w: timed(bare, n, w),
                "crun run": lambda n, w: crun_times(work, bundle, n, w),
                "crun run, berth's isolation": lambda n, w: crun_times(work, isolated, n, w),
            }, args.runs, args.warmup, args.rounds)
            start.cleanup()
            bare.cleanup()
            api, api_bare, crun, crun_iso = first.values()
            print("  like for like (isolation: crun's = bare `crun spec`: no user namespace, "
                  "no seccomp; berth's = a user namespace + Docker's seccomp allow-list):")
            for label, ratio, note in (
                    ("(a) berth default / crun default", api / crun,
                     "  (the issue's target <= 1.0)"),
                    ("(b) berth, crun's isolation / crun default", api_bare / crun, ""),
                    ("(c) berth default / crun with berth's isolation", api / crun_iso, "")):
                print(f"  {label + ':':<50}{ratio:5.2f}{note}")
            print(f"  load average {os.getloadavg()[0]:.1f}")

            print("2. end to end: a new CLI process per run, --rm")
            sides: dict[str, Side] = {
                "berth run --rm": lambda n, w: timed(cli_run(
                    [*berth, "run", "--rm", "--network", "none", IMAGE, "true"], cli_env),
                    n, w)}
            with contextlib.ExitStack() as stack:
                if not args.no_podman:
                    env = podman_env(work)
                    run(["podman", "import", str(tar), IMAGE], env=env)
                    sides["podman run --rm"] = lambda n, w: timed(cli_run(
                        ["podman", "run", "--rm", "--network", "none", IMAGE, "true"], env),
                        n, w)
                if not args.no_docker:
                    dsock = stack.enter_context(start_dockerd(ns, work))
                    docker = [DOCKER, "-H", f"unix://{dsock}"]
                    run([*docker, "import", str(tar), IMAGE])
                    sides["docker run --rm"] = lambda n, w: timed(cli_run(
                        [*docker, "run", "--rm", "--network", "none", IMAGE, "true"]), n, w)
                second = interleaved(sides, args.runs, args.warmup, args.rounds)
            b = second.pop("berth run --rm")
            for name, med in second.items():
                print(f"  ratio berth/{name.split()[0]}: {b / med:.2f} (target <= 0.4)")
            print(f"  berth CLI: python {'with' if args.cli_site else 'without'} site "
                  f"(-S); load average at the end {os.getloadavg()[0]:.1f}")
    except CommandError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--crun-loop":
        crun_loop(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        parser = argparse.ArgumentParser(prog="python -m bench.api_start", description=__doc__)
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
