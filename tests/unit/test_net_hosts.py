"""/etc/hosts, resolv.conf and hostname as a container sees them."""

from __future__ import annotations

from pathlib import Path

from runtime.net.hosts import parse_resolv_conf, render_hosts, render_resolv_conf, write_files


def test_hosts_have_localhost_own_address_links_and_extra_hosts() -> None:
    text = render_hosts("web", ["10.88.0.3"], [("db", "pg", "10.88.0.2")],
                        [("registry", "192.0.2.9")])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.88.0.3\tweb" in lines
    assert "10.88.0.2\tdb pg" in lines
    assert lines[-1] == "192.0.2.9\tregistry"


def test_resolv_conf_parse_and_render() -> None:
    host = parse_resolv_conf("# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1 ; x\n"
                             "search a.example b.example\noptions edns0 trust-ad\n")
    assert host.nameservers == ("127.0.0.53", "192.0.2.1")
    assert host.search == ("a.example", "b.example")
    assert render_resolv_conf(["10.88.0.1"], host.search, ["ndots:0"]) == (
        "nameserver 10.88.0.1\nsearch a.example b.example\noptions ndots:0\n")


def test_write_files_rewrites_the_same_files_a_bind_mount_shows(tmp_path: Path) -> None:
    paths = write_files(tmp_path, hosts="h\n", resolv_conf="r\n", hostname="box")
    assert paths["/etc/hostname"].read_text() == "box\n"
    inode = paths["/etc/hosts"].stat().st_ino
    write_files(tmp_path, hosts="h2\n", resolv_conf="r\n", hostname="box")
    assert (tmp_path / "hosts").read_text() == "h2\n"
    assert (tmp_path / "hosts").stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostname", "hosts", "resolv.conf"]
