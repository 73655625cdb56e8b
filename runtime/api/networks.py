"""Network routes (Docker Engine API): list, inspect, create, remove, connect,
disconnect, prune — on runtime.net's NetworkService (`Backend.networks`).

Written by the networking helper (issue 4); the service's API is in
runtime/net/README.md. `host` and `none` are listed as Docker lists them
(pseudo-networks without records): the engine implements those modes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.api.backend import backend
from runtime.api.errors import BadRequest, NotImplementedYet
from runtime.api.filters import Filters, request_filters
from runtime.api.routes import RouteTable
from runtime.net.model import Attachment, Network, NetworkSpec
from runtime.net.provider import NetworkService, pseudo_network_id
from runtime.net.views import docker_endpoint, endpoint_id

NETWORK_FILTERS = ("name", "id", "driver", "label", "type", "dangling", "scope")
_EPOCH = "0001-01-01T00:00:00Z"


def service_of(request: web.Request) -> NetworkService:
    svc = getattr(backend(request), "networks", None)
    if svc is None:
        raise NotImplementedYet("networks are not available in this berthd")
    assert isinstance(svc, NetworkService)
    return svc


def network_json(svc: NetworkService, net: Network, *, containers: bool = True) -> dict[str, Any]:
    """A network in Docker's shape (GET /networks/{id})."""
    eps = svc.network_endpoints(net.id) if containers else []
    return {
        "Name": net.name, "Id": net.id, "Created": net.created or _EPOCH, "Scope": "local",
        "Driver": str(net.driver), "EnableIPv4": True, "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None,
                 "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]},
        "Internal": net.internal, "Attachable": False, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
        "Containers": {
            ep.container_id: {"Name": ep.name, "EndpointID": endpoint_id(ep),
                              "MacAddress": ep.mac,
                              "IPv4Address": f"{ep.address}/{ep.prefixlen}", "IPv6Address": ""}
            for ep in eps},
        "Options": dict(net.options), "Labels": dict(net.labels),
    }


def pseudo_json(name: str) -> dict[str, Any]:
    return {
        "Name": name, "Id": pseudo_network_id(name), "Created": _EPOCH, "Scope": "local",
        "Driver": "null" if name == "none" else name, "EnableIPv4": True, "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": []},
        "Internal": False, "Attachable": False, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
        "Options": {}, "Labels": {},
    }


def all_networks(svc: NetworkService) -> list[dict[str, Any]]:
    return [network_json(svc, n) for n in svc.networks()] + [
        pseudo_json("host"), pseudo_json("none")]


def matches(doc: dict[str, Any], f: Filters) -> bool:
    builtin = doc["Name"] in ("bridge", "host", "none")
    checks: dict[str, Callable[[str], bool]] = {
        "name": lambda v: v in doc["Name"],
        "id": lambda v: doc["Id"].startswith(v),
        "driver": lambda v: v == doc["Driver"],
        "scope": lambda v: v == "local",
        "type": lambda v: v == ("builtin" if builtin else "custom"),
        "dangling": lambda v: (v in ("1", "true")) == (not doc["Containers"] and not builtin),
        "label": lambda v: (v.partition("=")[0] in doc["Labels"] and
                            (not v.partition("=")[1] or
                             doc["Labels"][v.partition("=")[0]] == v.partition("=")[2])),
    }
    return all(any(checks[k](v) for v in vs) for k, vs in f.items() if vs)


def find_json(svc: NetworkService, ref: str) -> dict[str, Any]:
    for name in ("host", "none"):
        if ref in (name, pseudo_network_id(name)) or (
                len(ref) >= 3 and pseudo_network_id(name).startswith(ref)):
            return pseudo_json(name)
    return network_json(svc, svc.network(ref))


async def list_networks(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    f = request_filters(request, NETWORK_FILTERS)
    return web.json_response([d for d in all_networks(svc) if matches(d, f)])


async def inspect_network(request: web.Request) -> web.StreamResponse:
    return web.json_response(find_json(service_of(request), request.match_info["id"]))


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as e:
        raise BadRequest(f"invalid JSON body: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def create_network(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    body = await _body(request)
    configs = (body.get("IPAM") or {}).get("Config") or []
    v4 = [c for c in configs if ":" not in str(c.get("Subnet", ""))]
    if len(v4) > 1:
        raise BadRequest("only one IPv4 subnet per network is supported")
    if body.get("EnableIPv6"):
        raise BadRequest("IPv6 networks are not supported by berthd")
    spec = NetworkSpec(
        name=str(body.get("Name") or ""),
        subnet=str(v4[0].get("Subnet") or "") if v4 else "",
        gateway=str(v4[0].get("Gateway") or "") if v4 else "",
        internal=bool(body.get("Internal")),
        labels=tuple(sorted((body.get("Labels") or {}).items())),
        options=tuple(sorted((body.get("Options") or {}).items())),
    )
    if body.get("Driver") not in (None, "", "bridge"):
        raise BadRequest(f"network driver {body['Driver']} is not supported (only bridge)")
    net = await svc.create_network(spec)
    backend(request).publish("network", "create", net.id, {"name": net.name, "type": "bridge"})
    return web.json_response({"Id": net.id, "Warning": ""}, status=201)


async def remove_network(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    ref = request.match_info["id"]
    if ref in ("host", "none"):
        raise BadRequest(f"{ref} is a pre-defined network and cannot be removed")
    net = svc.network(ref)
    await svc.remove_network(net.id)
    backend(request).publish("network", "destroy", net.id, {"name": net.name, "type": "bridge"})
    return web.Response(status=204)


async def prune_networks(request: web.Request) -> web.StreamResponse:
    removed = await service_of(request).prune()
    return web.json_response({"NetworksDeleted": removed})


def _container(request: web.Request, ref: str) -> tuple[str, str, Path]:
    """(id, name, netns path) of a running container, from the engine."""
    engine = backend(request).need("containers")
    info = engine.inspect(ref)
    status = str(getattr(getattr(info, "state", None), "status", ""))
    if status not in ("running", "Status.RUNNING"):
        raise BadRequest(f"container {ref} is not running: start it, then connect it")
    netns = backend(request).info.exec_root / "netns" / info.id
    return str(info.id), str(info.name).lstrip("/"), netns


def _record_endpoint(request: web.Request, cid: str, net_name: str,
                     endpoint: dict[str, Any] | None) -> None:
    """Keep the engine's copy of NetworkSettings.Networks (what inspect shows) in
    step with a connect (endpoint) or a disconnect (None)."""
    engine = backend(request).need("containers")
    get, save = getattr(engine, "get", None), getattr(engine, "save", None)
    if get is None or save is None:
        return
    c = get(cid)
    settings = dict(getattr(c.record, "network", None) or {})
    networks = dict(settings.get("networks") or {})
    if endpoint is None:
        networks.pop(net_name, None)
    else:
        networks[net_name] = endpoint
    settings["networks"] = networks
    save(c, record_network=settings)


async def connect(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    body = await _body(request)
    cid, name, netns = _container(request, str(body.get("Container") or ""))
    if not netns.exists():
        raise BadRequest(f"container {name} has no network namespace of its own "
                         f"(network mode none or host)")
    ep_cfg = body.get("EndpointConfig") or {}
    net = svc.network(request.match_info["id"])
    ep = await svc.connect(cid, netns, Attachment(
        net.name, tuple(ep_cfg.get("Aliases") or ()),
        str((ep_cfg.get("IPAMConfig") or {}).get("IPv4Address") or "")), name)
    doc = docker_endpoint(ep, net)
    _record_endpoint(request, cid, net.name, doc)
    backend(request).publish("network", "connect", net.id,
                             {"name": net.name, "type": "bridge", "container": cid})
    return web.json_response(doc)


async def disconnect(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    body = await _body(request)
    engine = backend(request).need("containers")
    info = engine.inspect(str(body.get("Container") or ""))
    net = svc.network(request.match_info["id"])
    await svc.disconnect(str(info.id), net.id)
    _record_endpoint(request, str(info.id), net.name, None)
    backend(request).publish("network", "disconnect", net.id,
                             {"name": net.name, "type": "bridge", "container": str(info.id)})
    return web.Response(status=200)


def add_routes(table: RouteTable) -> None:
    table.get("/networks", list_networks)
    table.post("/networks/create", create_network)
    table.post("/networks/prune", prune_networks)
    table.get("/networks/{id}", inspect_network)
    table.delete("/networks/{id}", remove_network)
    table.post("/networks/{id}/connect", connect)
    table.post("/networks/{id}/disconnect", disconnect)
