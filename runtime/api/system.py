"""System routes: _ping, version (more with the engine: info, events, df)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.api import versions
from runtime.api.backend import Backend, DaemonInfo, backend
from runtime.api.routes import RouteTable

# Docker reports Go's GOARCH names.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def goarch(machine: str) -> str:
    return _GOARCH.get(machine, machine)


def version_body(info: DaemonInfo) -> dict[str, object]:
    """`GET /version` in Docker's shape (the docker CLI reads Components and Platform)."""
    # A Python package has no build stamp; Docker's field stays empty rather than invented.
    build_time = ""
    details = {
        "ApiVersion": versions.API_VERSION,
        "Arch": goarch(info.arch),
        "BuildTime": build_time,
        "Experimental": "false",
        "GitCommit": "",
        "GoVersion": "",
        "KernelVersion": info.kernel,
        "MinAPIVersion": versions.MIN_API_VERSION,
        "Os": "linux",
    }
    return {
        "Platform": {"Name": "Berth"},
        "Components": [{"Name": "Engine", "Version": info.version, "Details": details}],
        "Version": info.version,
        "ApiVersion": versions.API_VERSION,
        "MinAPIVersion": versions.MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": goarch(info.arch),
        "KernelVersion": info.kernel,
        "Experimental": False,
        "BuildTime": build_time,
    }


async def ping(request: web.Request) -> web.StreamResponse:
    return web.Response(text="OK", content_type="text/plain",
                        headers={"Cache-Control": "no-cache, no-store, must-revalidate",
                                 "Pragma": "no-cache"})


async def version(request: web.Request) -> web.StreamResponse:
    return web.json_response(version_body(backend(request).info))


def operating_system() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def info_body(b: Backend, engine: Any, images: int, tasks: int = 0) -> dict[str, Any]:
    """`GET /info` in Docker's shape from the engine's EngineInfo and the image count."""
    info = b.info
    missing = set(engine.cgroup_missing) if engine is not None else set()
    warnings = list(engine.warnings) if engine is not None else []
    if engine is None:
        warnings.append("the container engine is not running in this berthd")
    return {
        "ID": info.engine_id, "Name": info.hostname, "ServerVersion": info.version,
        "Containers": engine.containers if engine else 0,
        "ContainersRunning": engine.running if engine else 0,
        "ContainersPaused": engine.paused if engine else 0,
        "ContainersStopped": engine.stopped if engine else 0,
        "Images": images, "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "overlayfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"],
                    "Authorization": None, "Log": ["json-file", "journald"]},
        "MemoryLimit": "memory" not in missing, "SwapLimit": "memory" not in missing,
        "CpuCfsPeriod": "cpu" not in missing, "CpuCfsQuota": "cpu" not in missing,
        "CPUShares": "cpu" not in missing, "CPUSet": False,
        "PidsLimit": "pids" not in missing, "IPv4Forwarding": True, "BridgeNfIptables": False,
        "BridgeNfIp6tables": False, "Debug": False, "NFd": len(os.listdir("/proc/self/fd")),
        "OomKillDisable": False, "NGoroutines": tasks,
        "SystemTime": dt.datetime.now(dt.UTC).isoformat(),
        "LoggingDriver": engine.log_driver if engine else "json-file",
        "CgroupDriver": "cgroupfs", "CgroupVersion": "2",
        "NEventsListener": 0, "KernelVersion": info.kernel,
        "OperatingSystem": operating_system(), "OSVersion": "", "OSType": "linux",
        "Architecture": info.arch, "NCPU": os.cpu_count() or 1,
        "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "IndexServerAddress": "", "RegistryConfig": {"IndexConfigs": {},
                                                     "InsecureRegistryCIDRs": []},
        "DockerRootDir": str(info.data_root), "HttpProxy": "", "HttpsProxy": "",
        "NoProxy": "", "Labels": [], "ExperimentalBuild": False,
        "Runtimes": {"berth": {"path": "berthd"}}, "DefaultRuntime": "berth",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=no-new-privileges"]
        + (["name=userns"] if engine is not None and engine.userns else []),
        "Warnings": warnings or None,
        "Uptime": time.time() - info.started_at,
    }


async def system_info(request: web.Request) -> web.StreamResponse:
    b = backend(request)
    tasks = len(asyncio.all_tasks())  # the event loop's "goroutines"
    # The engine's state is read on the loop (it changes there); the store in a thread.
    engine = b.containers.info() if b.containers is not None else None
    images = 0
    if b.images is not None:
        images = len(await asyncio.to_thread(b.images.list_images))
    return web.json_response(await asyncio.to_thread(info_body, b, engine, images, tasks))


async def disk_usage(request: web.Request) -> web.StreamResponse:
    from runtime.api import container_views, volumes
    from runtime.store import views as image_views

    b = backend(request)
    store, mgr = b.need("images"), b.need("containers")

    # Records are read on the loop (the engine changes them there); sizes in a thread.
    records = [(container_views.summary_json(rec), mgr.data_dir(rec.id) / "upper")
               for rec in mgr.list(all=True)]
    vols = volumes.usage(mgr)

    def collect() -> dict[str, Any]:
        recs = store.list_images()
        images = [image_views.summary(store, rec) for rec in recs]
        # dockerd's df counts the layers an image shares with others (the docker CLI
        # skips an image whose SharedSize is -1 when it sums what is in use).
        uses = collections.Counter(d for rec in recs for d in set(rec.diff_ids))
        shared = {d: store.layers.disk_usage(d) for d, n in uses.items() if n > 1}
        for doc, rec in zip(images, recs, strict=True):
            doc["SharedSize"] = sum(shared.get(d, 0) for d in set(rec.diff_ids))
        layers_size = sum(i["Size"] for i in images) - sum(
            size * (uses[d] - 1) for d, size in shared.items())
        containers = []
        for doc, upper in records:
            doc["SizeRw"] = sum(p.stat().st_size for p in upper.rglob("*")
                                if p.is_file() and not p.is_symlink())
            containers.append(doc)
        return {"LayersSize": layers_size, "Images": images,
                "Containers": containers, "Volumes": volumes.sized(vols),
                "BuildCache": []}

    return web.json_response(await asyncio.to_thread(collect))


def add_routes(table: RouteTable) -> None:
    table.get("/_ping", ping)
    table.get("/version", version)
    table.get("/info", system_info)
    table.get("/system/df", disk_usage)
