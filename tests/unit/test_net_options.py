"""A container's network options: Docker's create body in, ContainerNetConfig out."""

from __future__ import annotations

import pytest

from runtime.net.model import Attachment, PortBinding, Proto
from runtime.net.options import BadNetworkOptions, config_from_options, options_from_docker

BODY = {
    "Image": "web", "Env": ["A=1"],
    "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
    "HostConfig": {
        "NetworkMode": "app", "PublishAllPorts": True,
        "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
        "Links": ["/db:/web/db"], "Dns": ["192.0.2.53"], "ExtraHosts": ["reg:192.0.2.9"],
    },
    "NetworkingConfig": {"EndpointsConfig": {"app": {
        "Aliases": ["www"], "IPAMConfig": {"IPv4Address": "10.89.0.50"}}}},
}


def test_docker_body_to_config() -> None:
    opts = options_from_docker(BODY)
    cfg = config_from_options(name="/web", hostname="abc", options=opts, exposed=["8443/tcp"])
    assert cfg.name == "web"
    assert cfg.attachments == (Attachment("app", ("www",), "10.89.0.50"),)
    assert cfg.ports == (PortBinding(80, Proto.TCP, "127.0.0.1", 8080), PortBinding(443),
                         PortBinding(8443))
    assert [(lk.name, lk.alias) for lk in cfg.links] == [("db", "db")]
    assert cfg.dns == ("192.0.2.53",)
    assert cfg.extra_hosts == (("reg", "192.0.2.9"),)


def test_default_mode_is_the_default_bridge() -> None:
    cfg = config_from_options(name="x", hostname="x", options=options_from_docker({}))
    assert cfg.attachments == (Attachment("bridge"),)
    assert cfg.ports == ()


def test_bad_options_are_refused() -> None:
    with pytest.raises(BadNetworkOptions):
        config_from_options(name="x", hostname="x", options={"ExtraHosts": ["nocolon"]})
    with pytest.raises(BadNetworkOptions):
        config_from_options(name="x", hostname="x", options={"NetworkMode": "host"})
