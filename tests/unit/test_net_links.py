"""Legacy --link environment variables, as Docker wrote them."""

from __future__ import annotations

from runtime.net.links import link_env


def test_link_env_matches_docker() -> None:
    env = link_env("web", "db", "10.88.0.5", ["5432/tcp", "53/udp"],
                   ["POSTGRES_USER=app", "PATH=/usr/bin", "HOME=/root", "A=b=c"])
    assert env == [
        "DB_NAME=/web/db",
        "DB_PORT=udp://10.88.0.5:53",
        "DB_PORT_53_UDP=udp://10.88.0.5:53",
        "DB_PORT_53_UDP_PROTO=udp",
        "DB_PORT_53_UDP_PORT=53",
        "DB_PORT_53_UDP_ADDR=10.88.0.5",
        "DB_PORT_5432_TCP=tcp://10.88.0.5:5432",
        "DB_PORT_5432_TCP_PROTO=tcp",
        "DB_PORT_5432_TCP_PORT=5432",
        "DB_PORT_5432_TCP_ADDR=10.88.0.5",
        "DB_ENV_POSTGRES_USER=app",
        "DB_ENV_A=b=c",
    ]


def test_alias_with_dashes_becomes_a_valid_variable_prefix() -> None:
    env = link_env("/web", "my-db", "10.88.0.5", [], [])
    assert env == ["MY_DB_NAME=/web/my-db"]
