"""Legacy `--link name:alias` (the default bridge only), as Docker did in 2014.

The linking container gets a hosts entry for the alias and these variables
(Docker's daemon/links): ALIAS_NAME=/self/alias, ALIAS_PORT (the lowest
exposed port), for each exposed port ALIAS_PORT_80_TCP=tcp://IP:80 with
_PROTO, _PORT and _ADDR, and ALIAS_ENV_X for the target's environment
(except HOME and PATH, as Docker skips them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from runtime.net.ports import parse_exposed


def env_prefix(alias: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", alias).upper()


def link_env(self_name: str, alias: str, ip: str, exposed: Iterable[str],
             target_env: Iterable[str]) -> list[str]:
    p = env_prefix(alias)
    out = [f"{p}_NAME=/{self_name.lstrip('/')}/{alias}"]
    ports = sorted({parse_exposed(k) for k in exposed}, key=lambda x: (x[0], str(x[1])))
    if ports:
        port, proto = ports[0]
        out.append(f"{p}_PORT={proto}://{ip}:{port}")
    for port, proto in ports:
        q = f"{p}_PORT_{port}_{str(proto).upper()}"
        out += [f"{q}={proto}://{ip}:{port}", f"{q}_PROTO={proto}", f"{q}_PORT={port}",
                f"{q}_ADDR={ip}"]
    for item in target_env:
        key, sep, value = item.partition("=")
        if sep and key not in ("HOME", "PATH"):
            out.append(f"{p}_ENV_{key}={value}")
    return out
