"""The engine's NetworkProvider (runtime/container/network.py), on NetworkService.

The engine bind-mounts each bridged container's namespace and calls `setup`
before the container's process execs, `teardown` after it exited and on
remove. This adapter turns the engine's opaque `options` (runtime/net/
options.py) into a ContainerNetConfig, writes /etc/hosts, resolv.conf and
hostname under `<files_root>/<container-id>/` for the engine to bind, and
answers with Docker's NetworkSettings shapes.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.container.network import NetworkRequest, NetworkResult
from runtime.net import hosts
from runtime.net.options import config_from_options
from runtime.net.ports import parse_exposed, to_docker_ports
from runtime.net.provider import NetworkService
from runtime.net.views import docker_endpoint


class EngineNetwork:
    """NetworkProvider for the container engine."""

    def __init__(self, service: NetworkService, files_root: Path) -> None:
        self.service = service
        self.files_root = files_root

    def files_for(self, container_id: str) -> dict[str, Path]:
        """Where setup writes the container's /etc files (dst -> host file): fixed
        in advance, so the engine can put their bind mounts in the rootfs plan."""
        folder = self.files_root / container_id
        return {f"/etc/{n}": folder / n for n in ("hosts", "resolv.conf", "hostname")}

    def prepare_files(self, container_id: str) -> dict[str, Path]:
        """files_for, created empty: the engine stages the bind mounts before the
        clone, and setup then fills these same inodes before the container runs."""
        files = self.files_for(container_id)
        (self.files_root / container_id).mkdir(parents=True, exist_ok=True)
        for path in files.values():
            path.touch(mode=0o644, exist_ok=True)
        return files

    def link_env(self, request: NetworkRequest) -> tuple[str, ...]:
        """The --link variables of a start, known before the clone (the targets
        run already): the engine adds them to the process environment."""
        options: Mapping[str, Any] = {**request.options, "NetworkMode": request.mode}
        config = config_from_options(name=request.name, hostname=request.hostname,
                                     options=options)
        return self.service.link_env(config)

    async def setup(self, container_id: str, netns_path: Path,
                    request: NetworkRequest) -> NetworkResult:
        options: Mapping[str, Any] = {**request.options, "NetworkMode": request.mode}
        env = [str(e) for e in options.get("Env") or []]
        exposed = [f"{p}/{proto}" for p, proto in
                   (parse_exposed(str(k)) for k in options.get("ExposedPorts") or [])]
        config = config_from_options(name=request.name, hostname=request.hostname,
                                     options=options)
        config = replace(config, env=tuple(env), exposed_ports=tuple(exposed))
        res = await self.service.setup(container_id, netns_path, config)
        try:
            files = hosts.write_files(self.files_root / container_id, hosts=res.hosts,
                                      resolv_conf=res.resolv_conf, hostname=res.hostname)
        except OSError:
            await self.service.teardown(container_id)
            raise
        first = res.endpoints[0] if res.endpoints else None
        nets = {n.id: n for n in self.service.networks()}
        return NetworkResult(
            ip_address=first.address if first else "",
            gateway=first.gateway if first and not nets[first.network_id].internal else "",
            mac_address=first.mac if first else "",
            ports=to_docker_ports(res.ports, exposed),
            networks={ep.network: docker_endpoint(ep, nets.get(ep.network_id))
                      for ep in res.endpoints},
            files={dst: str(src) for dst, src in files.items()},
        )

    async def teardown(self, container_id: str) -> None:
        await self.service.teardown(container_id)
        shutil.rmtree(self.files_root / container_id, ignore_errors=True)
