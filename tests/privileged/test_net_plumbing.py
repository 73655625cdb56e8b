"""Container networking end to end, on plain namespaces standing for containers.

The "host" is the test's own network namespace (the `netns` fixture); each
container is a namespace of its own; a third namespace stands for the world
outside the host. Nothing here touches the machine's root namespace.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.net.model import (
    Attachment,
    ContainerNetConfig,
    NetError,
    NetworkSpec,
    PortBinding,
    PortInUse,
    Proto,
)
from runtime.net.options import config_from_options
from runtime.net.ports import parse_port_specs
from tests.privileged.conftest import NetNS
from tests.privileged.net_helpers import (
    HOST_ADDR,
    OUTSIDE_ADDR,
    FakeContainer,
    Lab,
    add_outside,
    lab,
)


@pytest.fixture
def net(netns: NetNS, tmp_path: Path) -> Iterator[Lab]:
    with lab(netns.name, tmp_path) as the_lab:
        yield the_lab


def web_server(the_lab: Lab, c: FakeContainer, port: int = 80, text: str = "") -> None:
    www = the_lab.tmp / f"www-{c.name}"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text(text or f"hello from {c.name}\n")
    c.start("busybox", "httpd", "-f", "-p", str(port), "-h", str(www))
    # busybox httpd binds at once; wait until it answers from inside
    for _ in range(50):
        if c.run("curl", "-s", "-m", "1", f"http://127.0.0.1:{port}/").returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"httpd in {c.name} did not start")


def curl(runner: Lab | FakeContainer, url: str) -> str:
    argv = ("curl", "-sS", "-m", "3", url)
    r = runner.host(*argv) if isinstance(runner, Lab) else runner.run(*argv)
    return r.stdout if r.returncode == 0 else f"FAILED: {r.stderr.strip()}"


def test_published_ports_reach_the_http_server(net: Lab) -> None:
    outside = add_outside(net)
    web = net.container("web")
    res = net.setup(web, ContainerNetConfig(
        name="web", hostname="web",
        ports=tuple(parse_port_specs(["80", "8080:80", "127.0.0.1:9090:80", "5353:53/udp"]))))
    web_server(net, web)
    random_port = res.ports[0].binding.host_port
    assert 32768 <= random_port <= 60999
    # from outside the host, on the host's address
    assert curl(outside, f"http://{HOST_ADDR}:{random_port}/") == "hello from web\n"
    assert curl(outside, f"http://{HOST_ADDR}:8080/") == "hello from web\n"
    assert curl(outside, f"http://{HOST_ADDR}:9090/").startswith("FAILED")
    # from the host itself, localhost included
    for url in (f"http://127.0.0.1:{random_port}/", "http://127.0.0.1:8080/",
                "http://127.0.0.1:9090/"):
        assert curl(net, url) == "hello from web\n", url
    # from containers on the bridge, through the host's address (hairpin NAT),
    # the web container itself included
    client = net.container("client")
    net.setup(client)
    gw = res.endpoints[0].gateway
    assert curl(client, f"http://{gw}:8080/") == "hello from web\n"
    assert curl(web, f"http://{gw}:{random_port}/") == "hello from web\n"
    # UDP too
    web.start("python3", "-c", "import socket\ns = socket.socket(2, 2)\ns.bind(('', 53))\n"
              "while True:\n d, a = s.recvfrom(99)\n s.sendto(d.upper(), a)")
    time.sleep(0.3)
    r = outside.run("python3", "-c",
                    "import socket\ns = socket.socket(2, 2)\ns.settimeout(3)\n"
                    f"s.sendto(b'ping', ('{HOST_ADDR}', 5353))\nprint(s.recv(99).decode())")
    assert r.stdout.strip() == "PING", r.stderr


def test_outbound_traffic_is_masqueraded(net: Lab) -> None:
    add_outside(net)
    c = net.container("client")
    net.setup(c)
    assert curl(c, f"http://{OUTSIDE_ADDR}/") == HOST_ADDR


def test_containers_on_a_user_network_reach_each_other_by_name_and_alias(net: Lab) -> None:
    add_outside(net)
    net.resolv.write_text(f"nameserver {OUTSIDE_ADDR}\nsearch example.test\n")
    net.loop.call(net.service.create_network(NetworkSpec("app")))
    web, client = net.container("web"), net.container("client")
    net.setup(web, ContainerNetConfig(name="web", hostname="web",
                                      attachments=(Attachment("app", ("www",)),)))
    res = net.setup(client, ContainerNetConfig(name="client", hostname="client",
                                               attachments=(Attachment("app"),)))
    web_server(net, web)
    assert res.resolv_conf.startswith(f"nameserver {res.endpoints[0].gateway}\n")
    assert curl(client, "http://web/") == "hello from web\n"
    assert curl(client, "http://www/") == "hello from web\n"
    got = client.run("getent", "hosts", "client").stdout.split()
    assert got[:1] == [res.endpoints[0].address]
    # other names go to the host's resolvers
    assert client.run("getent", "hosts", "anything.example.org").stdout.split()[:1] == [
        "192.0.2.99"]


def test_legacy_links_give_hosts_entries_and_env_vars(net: Lab) -> None:
    db, web = net.container("db"), net.container("web")
    db_res = net.setup(db, ContainerNetConfig(name="db", hostname="db",
                                              env=("POSTGRES_DB=app", "PATH=/bin"),
                                              exposed_ports=("5432/tcp",)))
    web_server(net, db, 5432, "db here\n")
    # the way the engine passes it: Docker's HostConfig.Links, resolved by name
    config = config_from_options(name="/web", hostname="web",
                                 options={"Links": ["/db:/web/dbalias"]})
    res = net.setup(web, config)
    ip = db_res.endpoints[0].address
    assert f"DBALIAS_PORT_5432_TCP=tcp://{ip}:5432" in res.env
    assert f"DBALIAS_PORT_5432_TCP_ADDR={ip}" in res.env
    assert "DBALIAS_ENV_POSTGRES_DB=app" in res.env
    assert "DBALIAS_NAME=/web/dbalias" in res.env
    assert curl(web, "http://dbalias:5432/") == "db here\n"
    assert curl(web, "http://db:5432/") == "db here\n"
    with pytest.raises(NetError):
        net.setup(net.container("x"), config_from_options(
            name="x", hostname="x", options={"Links": ["nosuch:alias"]}))


def test_internal_network_has_no_way_out(net: Lab) -> None:
    add_outside(net)
    net.loop.call(net.service.create_network(NetworkSpec("secret", internal=True)))
    inside, peer, out = net.container("inside"), net.container("peer"), net.container("free")
    net.setup(inside, ContainerNetConfig(name="inside", hostname="inside",
                                         attachments=(Attachment("secret"),)))
    net.setup(peer, ContainerNetConfig(name="peer", hostname="peer",
                                       attachments=(Attachment("secret"),)))
    net.setup(out)
    web_server(net, peer)
    assert curl(out, f"http://{OUTSIDE_ADDR}/") == HOST_ADDR  # the bridge has a way out
    assert curl(inside, f"http://{OUTSIDE_ADDR}/").startswith("FAILED")
    assert "default" not in inside.run("ip", "route").stdout
    # even with a route added by hand, the host drops it
    inside.run("ip", "route", "add", "default", "via", "10.89.0.1")
    assert curl(inside, f"http://{OUTSIDE_ADDR}/").startswith("FAILED")
    assert curl(inside, "http://peer/") == "hello from peer\n"  # names still resolve inside
    with pytest.raises(NetError):
        net.setup(net.container("pub"), ContainerNetConfig(
            name="pub", hostname="pub", attachments=(Attachment("secret"),),
            ports=(PortBinding(80),)))


def test_networks_are_isolated_unless_a_container_joins_both(net: Lab) -> None:
    for name in ("one", "two"):
        net.loop.call(net.service.create_network(NetworkSpec(name)))
    a, b, both = net.container("a"), net.container("b"), net.container("both")
    a_ip = net.setup(a, ContainerNetConfig(name="a", hostname="a",
                                           attachments=(Attachment("one"),))).endpoints[0].address
    b_ip = net.setup(b, ContainerNetConfig(name="b", hostname="b",
                                           attachments=(Attachment("two"),))).endpoints[0].address
    net.setup(both, ContainerNetConfig(name="both", hostname="both",
                                       attachments=(Attachment("one"),)))
    ep = net.loop.call(net.service.connect(net.cid(both), both.netns_path, Attachment("two"),
                                           "both"))
    assert ep.ifname == "eth1"
    web_server(net, a)
    web_server(net, b)
    assert curl(a, f"http://{b_ip}/").startswith("FAILED")
    assert curl(b, f"http://{a_ip}/").startswith("FAILED")
    # nor can b ask network one's DNS responder (on the host) for one's names
    one_gw = net.service.network("one").gateway
    assert a_ip in a.run("busybox", "nslookup", "a", one_gw).stdout
    asked = b.run("timeout", "3", "busybox", "nslookup", "a", one_gw)
    assert a_ip not in asked.stdout
    assert curl(both, f"http://{a_ip}/") == "hello from a\n"
    assert curl(both, f"http://{b_ip}/") == "hello from b\n"
    net.loop.call(net.service.disconnect(net.cid(both), "two"))
    assert curl(both, f"http://{b_ip}/").startswith("FAILED")


def test_restart_after_kill_keeps_ports_and_cleans_what_died(net: Lab) -> None:
    web, ghost = net.container("web"), net.container("ghost")
    net.setup(web, ContainerNetConfig(name="web", hostname="web",
                                      ports=(PortBinding(80, Proto.TCP, "", 8080),)))
    ghost_res = net.setup(ghost, ContainerNetConfig(name="ghost", hostname="ghost",
                                                    ports=(PortBinding(80, Proto.TCP, "", 8081),)))
    web_server(net, web)
    # the daemon dies: its sockets go, the kernel state stays; a crash mid-start
    # also left a veth the records never heard of
    net.loop.call(net.service.close())
    net.host("ip", "link", "add", "vbdeadbeef000", "type", "veth", "peer", "name", "vbdeadbeef001")
    # ...and links that are not Berth's (a dockerd's bridge, VirtualBox) must survive
    net.host("ip", "link", "add", "br-0123456789ab", "type", "bridge")
    net.host("ip", "link", "add", "vboxnet0", "type", "bridge")
    net.service = net.new_service()
    gone = net.loop.call(net.service.reconcile({net.cid(web)}))
    assert gone == [net.cid(ghost)]
    assert curl(net, "http://127.0.0.1:8080/") == "hello from web\n"
    links = net.host("ip", "-o", "link").stdout
    assert "vbdeadbeef" not in links
    assert "br-0123456789ab" in links and "vboxnet0" in links
    net.host("ip", "link", "del", "br-0123456789ab")
    net.host("ip", "link", "del", "vboxnet0")
    assert ghost_res.endpoints[0].host_ifname not in links
    assert "8081" not in net.host("nft", "list", "table", "ip", "berth").stdout


def test_nothing_is_left_after_failed_starts_and_removal(net: Lab) -> None:
    net.loop.call(net.service.create_network(NetworkSpec("app", subnet="10.123.0.0/24")))
    a, b = net.container("a"), net.container("b")
    net.setup(a, ContainerNetConfig(name="a", hostname="a",
                                    attachments=(Attachment("app"), Attachment("bridge")),
                                    ports=(PortBinding(80, Proto.TCP, "", 8080),)))
    links_before = net.host("ip", "-o", "link").stdout
    # a failed start: its port is taken; nothing of it may remain
    with pytest.raises(PortInUse):
        net.setup(b, ContainerNetConfig(name="b", hostname="b",
                                        attachments=(Attachment("app"),),
                                        ports=(PortBinding(80, Proto.TCP, "", 8080),)))
    assert net.host("ip", "-o", "link").stdout == links_before
    assert b.run("ip", "-o", "link").stdout.count("\n") == 1  # lo only
    assert net.service.endpoints(net.cid(b)) == []
    with pytest.raises(NetError):
        net.loop.call(net.service.remove_network("app"))  # a is still on it
    for c in list(net.containers):
        net.loop.call(net.service.teardown(net.cid(c)))
    assert net.loop.call(net.service.prune()) == ["app"]
    net.loop.call(net.service.destroy())
    assert net.host("ip", "-o", "link").stdout.count("\n") == 1  # lo only
    assert net.host("nft", "list", "ruleset").stdout.strip() == ""
    assert "inet " not in net.host("ip", "-o", "addr").stdout.replace("inet 127.0.0.1/8", "")


def test_a_network_outgrows_one_bridge_through_overflow_bridges(netns: NetNS,
                                                                tmp_path: Path) -> None:
    # A Linux bridge takes 1023 ports; with 2 per bridge, 5 containers need 3 bridges.
    with lab(netns.name, tmp_path) as net:
        net.service.bridge_ports = 2
        add_outside(net)
        net.loop.call(net.service.create_network(NetworkSpec("big")))
        cs = [net.container(f"c{i}") for i in range(5)]
        res = [net.setup(c, ContainerNetConfig(
            name=c.name, hostname=c.name, attachments=(Attachment("big"),),
            ports=(PortBinding(80, Proto.TCP, "", 8080),) if c.name == "c4" else ()))
            for c in cs]
        assert len({r.endpoints[0].bridge for r in res}) == 3
        web_server(net, cs[0])
        web_server(net, cs[4])
        assert curl(cs[4], "http://c0/") == "hello from c0\n"  # across two overflow bridges
        assert curl(cs[0], "http://c4/") == "hello from c4\n"
        assert curl(cs[3], f"http://{OUTSIDE_ADDR}/") == HOST_ADDR
        assert curl(net, "http://127.0.0.1:8080/") == "hello from c4\n"
        gw = res[0].endpoints[0].gateway
        assert curl(cs[4], f"http://{gw}:8080/") == "hello from c4\n"  # hairpin via trunk
        # a restarted daemon keeps the overflow bridges its containers are in
        net.loop.call(net.service.close())
        net.service = net.new_service()
        net.service.bridge_ports = 2
        assert curl(cs[4], "http://c0/") == "hello from c0\n"
        for c in cs:
            net.loop.call(net.service.teardown(net.cid(c)))
        net.loop.call(net.service.remove_network("big"))
        left = net.host("ip", "-o", "link").stdout
        assert not any(f": {p}" in left for p in ("bx", "tx", "ty", "bb-", "vb"))


def test_a_network_that_cannot_be_made_changes_nothing(net: Lab) -> None:
    before_links = net.host("ip", "-o", "link").stdout
    before_nets = [n.name for n in net.service.networks()]
    # another DNS server holds UDP port 53 on the gateway address the network
    # will have (IP_FREEBIND: bound before the address exists)
    squatter = subprocess.Popen(
        ["nsenter", f"--net={net.host_netns}", "python3", "-c",
         "import socket, time\ns = socket.socket(2, 2)\ns.setsockopt(0, 15, 1)\n"
         "s.bind(('10.77.0.1', 53))\nprint('bound', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "bound\n"
        with pytest.raises(NetError, match=r":53 .*another DNS server"):
            net.loop.call(net.service.create_network(NetworkSpec("blocked",
                                                                 subnet="10.77.0.0/24")))
    finally:
        squatter.kill()
        squatter.wait()
    assert [n.name for n in net.service.networks()] == before_nets
    assert net.host("ip", "-o", "link").stdout == before_links
    with pytest.raises(NetError, match="invalid subnet"):
        net.loop.call(net.service.create_network(NetworkSpec("bad", subnet="10.1.2.3/16")))
    assert [n.name for n in net.service.networks()] == before_nets
