"""What the metadata instructions do to an image's config (pure functions)."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from types import MappingProxyType

from runtime.build.parser import Instruction, Keyword, json_form
from runtime.build.words import expand, key_values, words
from runtime.oci import Healthcheck, ImageConfig

DEFAULT_SHELL = ("/bin/sh", "-c")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def set_env(env: tuple[str, ...], key: str, value: str) -> tuple[str, ...]:
    kept = tuple(e for e in env if e.partition("=")[0] != key)
    return (*kept, f"{key}={value}")


def env_map(env: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, _, v in (e.partition("=") for e in env)}


def command(ins: Instruction, shell: tuple[str, ...]) -> tuple[str, ...]:
    """Exec form as written, shell form through the SHELL."""
    if ins.json_args is not None:
        return ins.json_args
    return (*shell, ins.args)


def duration_ns(text: str, ins: Instruction) -> int:
    pos, total = 0, 0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _UNITS[m.group(2)])
        pos = m.end()
    if pos != len(text) or not text:
        raise ins.error(f"invalid duration {text!r} (e.g. 30s, 1m30s)")
    return total


def port(text: str, ins: Instruction) -> list[str]:
    num, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ins.error(f"invalid proto: {proto}")
    lo, dash, hi = num.partition("-")
    if not lo.isdigit() or (dash and not hi.isdigit()):
        raise ins.error(f"invalid containerPort: {num}")
    if dash:
        return [f"{p}/{proto}" for p in range(int(lo), int(hi) + 1)]
    return [f"{int(lo)}/{proto}"]


def apply(cfg: ImageConfig, ins: Instruction, scope: dict[str, str], escape: str,
          cmd_set: bool) -> ImageConfig:
    """The config after a metadata instruction; `scope`: ARG and ENV values."""
    k, r = ins.keyword, dataclasses.replace
    shell = cfg.shell or DEFAULT_SHELL
    if k is Keyword.ENV:
        env = cfg.env
        for key, value in key_values(ins.args, scope, escape):
            env = set_env(env, key, value)
            scope[key] = value
        return r(cfg, env=env)
    if k is Keyword.LABEL:
        labels = dict(cfg.labels)
        labels.update(key_values(ins.args, scope, escape))
        return r(cfg, labels=MappingProxyType(labels))
    if k is Keyword.EXPOSE:
        ports = list(cfg.exposed_ports)
        for w in words(ins.args, scope, escape):
            ports += [p for p in port(w, ins) if p not in ports]
        return r(cfg, exposed_ports=tuple(ports))
    if k is Keyword.CMD:
        return r(cfg, cmd=command(ins, shell))
    if k is Keyword.ENTRYPOINT:
        # Docker: an ENTRYPOINT resets a CMD inherited from the base image.
        return r(cfg, entrypoint=command(ins, shell), cmd=cfg.cmd if cmd_set else None)
    if k is Keyword.WORKDIR:
        wd = " ".join(words(ins.args, scope, escape))
        return r(cfg, working_dir=posixpath.normpath(posixpath.join(cfg.working_dir or "/", wd)))
    if k is Keyword.USER:
        return r(cfg, user=" ".join(words(ins.args, scope, escape)))
    if k is Keyword.VOLUME:
        vols = list(ins.json_args) if ins.json_args is not None else words(ins.args, scope,
                                                                            escape)
        if ins.json_args is not None:
            vols = [expand(v, scope, escape) for v in vols]
        if not vols or any(not v for v in vols):
            raise ins.error("VOLUME specified can not be an empty string")
        return r(cfg, volumes=tuple(dict.fromkeys([*cfg.volumes, *vols])))
    if k is Keyword.STOPSIGNAL:
        return r(cfg, stop_signal=expand(ins.args, scope, escape))
    if k is Keyword.SHELL:
        return r(cfg, shell=ins.json_args)
    if k is Keyword.ONBUILD:
        return r(cfg, onbuild=(*cfg.onbuild, ins.args))
    if k is Keyword.HEALTHCHECK:
        return r(cfg, healthcheck=healthcheck(ins))
    if k is Keyword.MAINTAINER:
        return cfg  # recorded as the image's author by the builder
    raise ins.error("not a metadata instruction")


def healthcheck(ins: Instruction) -> Healthcheck:
    head, _, rest = ins.args.partition(" ")
    if head.upper() == "NONE":
        if rest.strip():
            raise ins.error("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(test=("NONE",))
    rest = rest.strip()
    if not rest:
        raise ins.error("HEALTHCHECK CMD requires a command")
    js = json_form(rest)
    test = ("CMD", *js) if js is not None else ("CMD-SHELL", rest)
    retries = ins.flag("retries")
    if retries is not None and not retries.isdigit():
        raise ins.error(f"--retries={retries}: not a number")

    def dur(name: str) -> int:
        v = ins.flag(name)
        return duration_ns(v, ins) if v else 0
    return Healthcheck(test=test, interval_ns=dur("interval"), timeout_ns=dur("timeout"),
                       start_period_ns=dur("start-period"),
                       retries=int(retries) if retries else 0)
