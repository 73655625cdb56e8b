"""The Dockerfile language: directives, continuations, comments, heredocs, stages.

`parse(text, name)` turns a Dockerfile into `Dockerfile(directives, meta_args,
stages)`. Each `Instruction` keeps its start line, its flags (`--from=x`),
its exec-form JSON list when it has one, and the bodies of its heredocs.
Variables are not expanded here: that happens at build time (words.py),
when the ARG and ENV values in scope are known.

Errors are `DockerfileError("Dockerfile:7: COPY: reason")`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum


class Keyword(StrEnum):
    FROM = "FROM"
    RUN = "RUN"
    CMD = "CMD"
    LABEL = "LABEL"
    MAINTAINER = "MAINTAINER"
    EXPOSE = "EXPOSE"
    ENV = "ENV"
    ADD = "ADD"
    COPY = "COPY"
    ENTRYPOINT = "ENTRYPOINT"
    VOLUME = "VOLUME"
    USER = "USER"
    WORKDIR = "WORKDIR"
    ARG = "ARG"
    ONBUILD = "ONBUILD"
    STOPSIGNAL = "STOPSIGNAL"
    HEALTHCHECK = "HEALTHCHECK"
    SHELL = "SHELL"


# Flags each instruction accepts (value-less flags are booleans).
FLAGS: dict[Keyword, frozenset[str]] = {
    Keyword.FROM: frozenset({"platform"}),
    Keyword.RUN: frozenset({"network", "mount", "security"}),
    Keyword.COPY: frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    Keyword.ADD: frozenset({"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"}),
    Keyword.HEALTHCHECK: frozenset({"interval", "timeout", "start-period", "start-interval",
                                    "retries"}),
}
HEREDOC_KEYWORDS = frozenset({Keyword.RUN, Keyword.COPY, Keyword.ADD})
JSON_KEYWORDS = frozenset({Keyword.RUN, Keyword.CMD, Keyword.ENTRYPOINT, Keyword.SHELL,
                           Keyword.VOLUME, Keyword.COPY, Keyword.ADD, Keyword.HEALTHCHECK})
_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_HEREDOC_RE = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FLAG_RE = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(.*))?$")
KNOWN_DIRECTIVES = ("syntax", "escape", "check")


class DockerfileError(ValueError):
    """Bad Dockerfile input, named by file, line and instruction."""

    def __init__(self, file: str, line: int, instruction: str, reason: str) -> None:
        self.file, self.line, self.instruction, self.reason = file, line, instruction, reason
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {instruction + ': ' if instruction else ''}{reason}")


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str
    expand: bool  # unquoted delimiter: variables are expanded


@dataclass(frozen=True)
class Instruction:
    keyword: Keyword
    args: str                         # after the flags; continuations joined
    line: int                         # first line in the file (1-based)
    original: str                     # as written (for history and cache keys)
    flags: tuple[tuple[str, str | None], ...] = ()
    json_args: tuple[str, ...] | None = None   # exec form
    heredocs: tuple[Heredoc, ...] = ()
    file: str = "Dockerfile"

    def flag(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.flags:
            if k == name:
                return v if v is not None else "true"
        return default

    def error(self, reason: str) -> DockerfileError:
        return DockerfileError(self.file, self.line, self.keyword.value, reason)


@dataclass(frozen=True)
class Stage:
    index: int
    base: str                 # unexpanded image reference (may hold $ARGs) or "scratch"
    name: str                 # AS name, lowercased; "" if none
    platform: str
    line: int
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    file: str
    directives: tuple[tuple[str, str], ...]
    meta_args: tuple[Instruction, ...]   # ARGs before the first FROM
    stages: tuple[Stage, ...]
    escape: str = "\\"

    def stage_index(self, name_or_index: str) -> int | None:
        for s in self.stages:
            if s.name and s.name == name_or_index.lower():
                return s.index
        if name_or_index.isdigit() and int(name_or_index) < len(self.stages):
            return int(name_or_index)
        return None

    @property
    def step_count(self) -> int:
        return sum(1 + len(s.instructions) for s in self.stages)


def _directives(lines: list[str], file: str) -> tuple[list[tuple[str, str]], int]:
    """Parser directives (`# escape=\\``, `# syntax=...`): only at the very top."""
    found: list[tuple[str, str]] = []
    n = 0
    for n, raw in enumerate(lines):
        m = _DIRECTIVE_RE.match(raw.strip()) if raw.lstrip().startswith("#") else None
        if m is None:
            return found, n
        key = m.group(1).lower()
        if key not in KNOWN_DIRECTIVES:
            return found, n  # an unknown directive is a comment and ends the directives
        if any(k == key for k, _ in found):
            raise DockerfileError(file, n + 1, "", f"only one {key} parser directive can be used")
        found.append((key, m.group(2)))
    return found, len(lines)


def parse(text: str, file: str = "Dockerfile") -> Dockerfile:
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")  # editors' BOM
    directives, _ = _directives(lines, file)
    escape = dict(directives).get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(file, 1, "", f"invalid escape token {escape!r} does not "
                              "match ` or \\")
    instructions = list(_instructions(lines, file, escape))
    return _stages(instructions, file, tuple(directives), escape)


def _instructions(lines: list[str], file: str, escape: str) -> list[Instruction]:
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i
        parts: list[str] = []
        while True:
            text = lines[i].rstrip()
            i += 1
            if text.endswith(escape):
                parts.append(text[:-1])
                # Comment and empty lines inside a continuation are dropped (Docker does).
                while i < len(lines) and (not lines[i].strip() or
                                          lines[i].lstrip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    break
                continue
            parts.append(text)
            break
        logical = "".join(parts).strip()
        keyword_text, _, rest = logical.partition(" ")
        if "\t" in keyword_text:
            keyword_text, _, tail = keyword_text.partition("\t")
            rest = tail + " " + rest
        try:
            keyword = Keyword(keyword_text.upper())
        except ValueError:
            raise DockerfileError(file, start + 1, keyword_text.upper(),
                                  "unknown instruction") from None
        heredocs: list[Heredoc] = []
        if keyword in HEREDOC_KEYWORDS:
            for m in _HEREDOC_RE.finditer(rest):
                strip_tabs, quote, name = m.group(1) == "-", m.group(2), m.group(3)
                body: list[str] = []
                while True:
                    if i >= len(lines):
                        raise DockerfileError(file, start + 1, keyword.value,
                                              f"unterminated heredoc <<{name}")
                    raw = lines[i]
                    i += 1
                    check = raw.lstrip("\t") if strip_tabs else raw
                    if check.rstrip() == name:
                        break
                    body.append(check)
                heredocs.append(Heredoc(name, "\n".join(body) + "\n", expand=not quote))
        out.append(_instruction(keyword, rest.strip(), start + 1, logical, tuple(heredocs),
                                file))
    return out


def _split_flags(keyword: Keyword, rest: str, line: int,
                 file: str) -> tuple[tuple[tuple[str, str | None], ...], str]:
    flags: list[tuple[str, str | None]] = []
    if keyword not in FLAGS:
        return (), rest  # CMD --serve: an argument, not a flag
    while rest.startswith("--"):
        word, _, tail = rest.partition(" ")
        m = _FLAG_RE.match(word)
        if m is None:
            raise DockerfileError(file, line, keyword.value, f"bad flag {word!r}")
        name, value = m.group(1), m.group(2)
        if name not in FLAGS.get(keyword, frozenset()):
            raise DockerfileError(file, line, keyword.value, f"unknown flag: --{name}")
        if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        flags.append((name, value))
        rest = tail.lstrip()
    return tuple(flags), rest


def json_form(text: str) -> tuple[str, ...] | None:
    if not text.startswith("["):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None  # Docker: not valid JSON means the shell form
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        return None
    return tuple(doc)


def _instruction(keyword: Keyword, rest: str, line: int, original: str,
                 heredocs: tuple[Heredoc, ...], file: str) -> Instruction:
    flags, args = _split_flags(keyword, rest, line, file)
    json_args = json_form(args) if keyword in JSON_KEYWORDS else None
    ins = Instruction(keyword, args, line, original, flags, json_args, heredocs, file)
    _validate(ins)
    return ins


def _validate(ins: Instruction) -> None:
    k, args = ins.keyword, ins.args
    if not args and k not in (Keyword.CMD, Keyword.ENTRYPOINT) and not ins.heredocs:
        raise ins.error(f"{k.value} requires at least one argument")
    if k in (Keyword.CMD, Keyword.ENTRYPOINT) and not args:
        raise ins.error(f"{k.value} requires at least one argument")
    if k is Keyword.SHELL and ins.json_args is None:
        raise ins.error('SHELL requires the arguments to be in JSON form, '
                        'e.g. SHELL ["/bin/sh", "-c"]')
    if k in (Keyword.COPY, Keyword.ADD):
        n = len(ins.json_args) if ins.json_args is not None else len(args.split())
        if n < 2:
            raise ins.error(f"{k.value} requires at least two arguments, but only one was "
                            f"provided. Destination could not be determined")
    if k is Keyword.RUN and ins.flag("mount") is not None:
        raise ins.error("the --mount option needs BuildKit; Berth's builder runs RUN in a "
                        "plain container (use COPY, or a multi-stage build)")
    for name in ("parents", "exclude", "checksum", "keep-git-dir"):
        if k in (Keyword.COPY, Keyword.ADD) and ins.flag(name) is not None:
            raise ins.error(f"--{name} is not supported by this builder (checksum and "
                            f"keep-git-dir apply to remote sources, which need a network)"
                            if name in ("checksum", "keep-git-dir") else
                            f"--{name} is not supported by this builder")
    if k is Keyword.RUN and ins.flag("security") is not None:
        raise ins.error("--security is not supported")
    if k is Keyword.RUN and ins.flag("network") not in (None, "none", "host", "default"):
        raise ins.error(f"--network={ins.flag('network')}: use none, default or host")
    if k is Keyword.ONBUILD:
        inner = args.split(None, 1)[0].upper()
        if inner in ("ONBUILD", "FROM", "MAINTAINER"):
            raise ins.error(f"{inner} isn't allowed as an ONBUILD trigger")
        parse_trigger(args, ins.file, ins.line)
    if k is Keyword.HEALTHCHECK:
        head = args.split(None, 1)[0].upper()
        if head not in ("NONE", "CMD"):
            raise ins.error("HEALTHCHECK takes NONE or CMD ...")


def parse_trigger(text: str, file: str = "Dockerfile", line: int = 0) -> Instruction:
    """An ONBUILD trigger (one instruction on one line)."""
    keyword_text, _, rest = text.strip().partition(" ")
    try:
        keyword = Keyword(keyword_text.upper())
    except ValueError:
        raise DockerfileError(file, line, "ONBUILD",
                              f"unknown instruction in trigger: {keyword_text}") from None
    return _instruction(keyword, rest.strip(), line, text.strip(), (), file)


def _from_parts(ins: Instruction) -> tuple[str, str]:
    words = ins.args.split()
    if len(words) == 1:
        return words[0], ""
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not re.match(r"^[a-z][a-z0-9-_.]*$", name):
            raise ins.error(f"invalid name for build stage: {words[2]!r}, name can't start "
                            "with a number or contain symbols")
        return words[0], name
    raise ins.error("FROM requires either one argument, or three: FROM <source> [AS <name>]")


def _stages(instructions: list[Instruction], file: str,
            directives: tuple[tuple[str, str], ...], escape: str) -> Dockerfile:
    meta: list[Instruction] = []
    stages: list[Stage] = []
    current: list[Instruction] = []
    head: Instruction | None = None
    names: set[str] = set()

    def close() -> None:
        if head is not None:
            base, name = _from_parts(head)
            if name and name in names:
                raise head.error(f"duplicate stage name {name!r}")
            names.add(name)
            stages.append(Stage(len(stages), base, name, head.flag("platform") or "",
                                head.line, tuple(current)))

    for ins in instructions:
        if ins.keyword is Keyword.FROM:
            close()
            head, current = ins, []
        elif head is None:
            if ins.keyword is not Keyword.ARG:
                raise ins.error("no build stage in current context: the first instruction "
                                "must be FROM (only ARG may come before it)")
            meta.append(ins)
        else:
            current.append(ins)
    close()
    if not stages:
        raise DockerfileError(file, 0, "", "the Dockerfile has no FROM instruction")
    return Dockerfile(file, directives, tuple(meta), tuple(stages), escape)
