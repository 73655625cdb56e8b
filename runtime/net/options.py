"""A container's network options: from Docker's create body to ContainerNetConfig.

The engine stores `CreateRequest.network_options` opaquely (JSON) and hands
it back at each start; this module owns its shape, which is Docker's own
vocabulary so that the API can copy fields straight from the create body:

    {"NetworkMode": "bridge" | "NAME",
     "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]},
     "PublishAllPorts": false,
     "ExposedPorts": ["80/tcp"],          # the image's and --expose
     "Links": ["db:alias"],
     "Aliases": {"NAME": ["a1"]},         # NetworkingConfig.EndpointsConfig.*.Aliases
     "IPAddress": {"NAME": "10.89.0.9"},  # ...EndpointsConfig.*.IPAMConfig.IPv4Address
     "Dns": [], "DnsSearch": [], "ExtraHosts": ["name:ip"],
     "Env": ["K=V"]}                      # what a --link to this container exposes
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from runtime.net.model import (
    DEFAULT_NETWORK,
    Attachment,
    ContainerNetConfig,
    LinkRequest,
    NetError,
)
from runtime.net.ports import from_docker_bindings, publish_all


class BadNetworkOptions(NetError, ValueError):
    pass


def _strs(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise BadNetworkOptions(f"{what} must be a list of strings, not {value!r}")
    return tuple(str(v) for v in value)


def options_from_docker(body: Mapping[str, Any]) -> dict[str, Any]:
    """network_options from a POST /containers/create body (Docker's shape)."""
    hc: Mapping[str, Any] = body.get("HostConfig") or {}
    endpoints: Mapping[str, Any] = (body.get("NetworkingConfig") or {}).get(
        "EndpointsConfig") or {}
    mode = str(hc.get("NetworkMode") or "") or DEFAULT_NETWORK
    if mode == "default":
        mode = DEFAULT_NETWORK
    aliases = {name: list(ep.get("Aliases") or []) for name, ep in endpoints.items()
               if ep and ep.get("Aliases")}
    ips = {name: str((ep.get("IPAMConfig") or {}).get("IPv4Address"))
           for name, ep in endpoints.items()
           if ep and (ep.get("IPAMConfig") or {}).get("IPv4Address")}
    exposed = body.get("ExposedPorts") or {}
    return {
        "NetworkMode": mode,
        "PortBindings": dict(hc.get("PortBindings") or {}),
        "PublishAllPorts": bool(hc.get("PublishAllPorts")),
        "ExposedPorts": sorted(exposed),
        "Links": list(hc.get("Links") or []),
        "Aliases": aliases,
        "IPAddress": ips,
        "Dns": list(hc.get("Dns") or []),
        "DnsSearch": list(hc.get("DnsSearch") or []),
        "ExtraHosts": list(hc.get("ExtraHosts") or []),
        "Env": list(body.get("Env") or []),
    }


def parse_link(text: str) -> tuple[str, str]:
    """`name:alias` or `name` -> (name, alias); a leading `/` is Docker's form."""
    name, _, alias = text.partition(":")
    name = name.strip("/").rsplit("/", 1)[-1]
    alias = alias.strip("/").rsplit("/", 1)[-1] or name
    if not name:
        raise BadNetworkOptions(f"invalid link {text!r}: expected NAME[:ALIAS]")
    return name, alias


def parse_extra_host(text: str) -> tuple[str, str]:
    host, sep, ip = text.partition(":")
    if not sep or not host or not ip:
        raise BadNetworkOptions(f"invalid --add-host {text!r}: expected HOST:IP")
    return host, ip


def config_from_options(
    *, name: str, hostname: str, options: Mapping[str, Any],
    exposed: Iterable[str] = (), domainname: str = "",
    link_target: Any = None,
) -> ContainerNetConfig:
    """The ContainerNetConfig of one start. `exposed` adds the image's ExposedPorts
    (for -P); `link_target(name) -> LinkRequest` resolves --link names (the
    provider's own lookup when None)."""
    mode = str(options.get("NetworkMode") or DEFAULT_NETWORK)
    if mode in ("none", "host") or mode.startswith("container:"):
        raise BadNetworkOptions(f"network mode {mode} is the engine's, not a bridge network")
    aliases: Mapping[str, Any] = options.get("Aliases") or {}
    ips: Mapping[str, Any] = options.get("IPAddress") or {}
    attachment = Attachment(mode, _strs(aliases.get(mode), "Aliases"), str(ips.get(mode) or ""))
    bindings = from_docker_bindings(options.get("PortBindings"))
    if options.get("PublishAllPorts"):
        all_exposed = list(dict.fromkeys([*_strs(options.get("ExposedPorts"), "ExposedPorts"),
                                          *exposed]))
        bindings = publish_all(all_exposed, bindings)
    links: list[LinkRequest] = []
    for text in _strs(options.get("Links"), "Links"):
        target, alias = parse_link(text)
        links.append(link_target(target, alias) if link_target else
                     LinkRequest(alias=alias, container_id="", name=target))
    return ContainerNetConfig(
        name=name.lstrip("/"), hostname=hostname, attachments=(attachment,),
        ports=tuple(bindings), links=tuple(links), dns=_strs(options.get("Dns"), "Dns"),
        dns_search=_strs(options.get("DnsSearch"), "DnsSearch"),
        extra_hosts=tuple(parse_extra_host(h) for h in _strs(options.get("ExtraHosts"),
                                                              "ExtraHosts")),
        domainname=domainname,
    )
