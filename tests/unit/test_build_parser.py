"""The Dockerfile parser and variable substitution on Dockerfiles as people write them."""

from __future__ import annotations

import pytest

from runtime.build.config import apply, healthcheck
from runtime.build.parser import DockerfileError, Keyword, parse
from runtime.build.words import SubstitutionError, expand, key_values, words
from runtime.oci import ImageConfig


def test_multistage_with_meta_args_and_names() -> None:
    df = parse("""# syntax=docker/dockerfile:1
ARG BASE=busybox
ARG VERSION
FROM ${BASE} AS build
RUN make
FROM --platform=linux/arm64 scratch as Final
COPY --from=build /out /app
""")
    assert df.directives == (("syntax", "docker/dockerfile:1"),)
    assert [i.args for i in df.meta_args] == ["BASE=busybox", "VERSION"]
    assert [(s.base, s.name, s.platform) for s in df.stages] == [
        ("${BASE}", "build", ""), ("scratch", "final", "linux/arm64")]
    assert df.stage_index("FINAL") == 1 and df.stage_index("0") == 0
    assert df.stage_index("nope") is None
    copy = df.stages[1].instructions[0]
    assert copy.flag("from") == "build" and copy.args == "/out /app"
    assert df.step_count == 4


def test_continuations_comments_and_blank_lines_inside() -> None:
    df = parse("FROM busybox\nRUN echo a \\\n# a comment in the middle\n\n    && echo b\n"
               "  # indented comment\nCMD echo done\n")
    run, cmd = df.stages[0].instructions
    assert run.args == "echo a     && echo b"
    assert run.line == 2 and cmd.line == 7


def test_escape_directive_backtick() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN dir c:\\ `\n  && echo ok\n")
    assert df.escape == "`"
    assert df.stages[0].instructions[0].args == "dir c:\\   && echo ok"


def test_directive_after_a_comment_is_just_a_comment() -> None:
    df = parse("# hello\n# escape=`\nFROM busybox\nRUN echo \\\n x\n")
    assert df.escape == "\\"
    assert df.stages[0].instructions[0].args == "echo  x"


def test_bad_escape_directive() -> None:
    with pytest.raises(DockerfileError, match="invalid escape token"):
        parse("# escape=x\nFROM busybox\n")


def test_exec_and_shell_forms() -> None:
    df = parse('FROM busybox\nCMD ["echo", "a b"]\nENTRYPOINT /bin/sh -c x\n'
               'RUN [ "$A" = 1 ]\nSHELL ["/bin/sh", "-ec"]\n')
    cmd, ep, run, shell = df.stages[0].instructions
    assert cmd.json_args == ("echo", "a b")
    assert ep.json_args is None
    assert run.json_args is None  # not a JSON list of strings: the shell form
    assert shell.json_args == ("/bin/sh", "-ec")


def test_heredocs() -> None:
    df = parse("FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\n"
               "COPY <<-'CONF' /etc/app.conf\n\tkey=$VALUE\n\tCONF\nRUN cat <<A && cat <<B\n"
               "a\nA\nb\nB\nCMD x\n")
    run, copy, run2, cmd = df.stages[0].instructions
    assert run.heredocs[0].content == "echo one\necho two\n" and run.heredocs[0].expand
    assert copy.heredocs[0].content == "key=$VALUE\n" and not copy.heredocs[0].expand
    assert [h.content for h in run2.heredocs] == ["a\n", "b\n"]
    assert cmd.line == 14


def test_unterminated_heredoc_names_the_line() -> None:
    with pytest.raises(DockerfileError) as e:
        parse("FROM busybox\n\nRUN <<EOF\necho\n")
    assert str(e.value) == "Dockerfile:3: RUN: unterminated heredoc <<EOF"


@pytest.mark.parametrize(("text", "message"), [
    ("FROM busybox\nFROBNICATE x\n", "Dockerfile:2: FROBNICATE: unknown instruction"),
    ("RUN echo\nFROM busybox\n", "Dockerfile:1: RUN: no build stage in current context"),
    ("", "Dockerfile: the Dockerfile has no FROM instruction"),
    ("FROM busybox\nCOPY onlyone\n", "Dockerfile:2: COPY: COPY requires at least two"),
    ("FROM busybox\nCOPY --frm=x a b\n", "Dockerfile:2: COPY: unknown flag: --frm"),
    ("FROM busybox\nSHELL /bin/bash -c\n", "Dockerfile:2: SHELL: SHELL requires the arguments"),
    ("FROM a AS x\nFROM b AS x\n", "Dockerfile:2: FROM: duplicate stage name 'x'"),
    ("FROM a b\n", "Dockerfile:1: FROM: FROM requires either one argument"),
    ("FROM a AS 1x\n", "Dockerfile:1: FROM: invalid name for build stage"),
    ("FROM a\nRUN --mount=type=cache,target=/x make\n", "Dockerfile:2: RUN: the --mount option"),
    ("FROM a\nONBUILD FROM b\n", "Dockerfile:2: ONBUILD: FROM isn't allowed"),
    ("FROM a\nENV\n", "Dockerfile:2: ENV: ENV requires at least one argument"),
    ("FROM a\nHEALTHCHECK --interval=1s echo\n", "Dockerfile:2: HEALTHCHECK: HEALTHCHECK takes"),
    ("# escape=`\n# escape=\\\nFROM a\n", "Dockerfile:2: only one escape parser directive"),
])
def test_errors_name_file_line_and_instruction(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as e:
        parse(text)
    assert str(e.value).startswith(message)


def test_error_names_the_given_file() -> None:
    with pytest.raises(DockerfileError, match=r"^ci/Dockerfile.prod:1: "):
        parse("BOGUS\n", "ci/Dockerfile.prod")


def test_keywords_are_case_insensitive_and_tabs_separate() -> None:
    df = parse("from busybox\nrun\techo hi\nExPoSe 80\n")
    assert [i.keyword for i in df.stages[0].instructions] == [Keyword.RUN, Keyword.EXPOSE]
    assert df.stages[0].instructions[0].args == "echo hi"


def test_crlf_line_endings_and_byte_order_mark() -> None:
    df = parse("\ufeffFROM busybox\r\nRUN echo a \\\r\n  b\r\n")
    assert df.stages[0].instructions[0].args == "echo a   b"


# --- substitution ---

ENV = {"A": "x", "EMPTY": "", "SP": "a b"}


@pytest.mark.parametrize(("text", "want"), [
    ("$A", ["x"]), ("${A}y", ["xy"]), ("${NOPE:-d}", ["d"]), ("${EMPTY:-d}", ["d"]),
    ("${EMPTY-d}", [""]), ("${A:+alt}", ["alt"]), ("${NOPE:+alt}", [""]),
    ("${EMPTY+set}", ["set"]), ("'$A'", ["$A"]), ('"$A b"', ["x b"]), ("\\$A", ["$A"]),
    ("$SP", ["a b"]), ("a  b", ["a", "b"]), ('"${NOPE:-a b}"', ["a b"]),
    ("${NOPE:-${A}}", ["x"]), ("$", ["$"]), ("100$", ["100$"]), ("$1", ["$1"]),
])
def test_words(text: str, want: list[str]) -> None:
    assert words(text, ENV) == want


def test_expand_keeps_quotes_for_json_forms() -> None:
    assert expand('["echo", "$A"]', ENV) == '["echo", "x"]'


def test_required_variable() -> None:
    with pytest.raises(SubstitutionError, match="NOPE: must be set"):
        words("${NOPE:?must be set}", ENV)
    with pytest.raises(SubstitutionError, match="unsupported modifier"):
        words("${A/x/y}", ENV)
    with pytest.raises(SubstitutionError, match="matching double-quote"):
        words('"open', ENV)


def test_key_values_new_and_legacy_forms() -> None:
    assert key_values('a=1 b="two words" c=$A', ENV) == [("a", "1"), ("b", "two words"),
                                                          ("c", "x")]
    assert key_values("LEGACY value with  spaces", ENV) == [("LEGACY", "value with spaces")]
    with pytest.raises(SubstitutionError):
        key_values("a=1 b", ENV)


# --- what metadata instructions do to the config ---

def _apply(cfg: ImageConfig, line: str, scope: dict[str, str] | None = None,
           cmd_set: bool = False) -> ImageConfig:
    ins = parse(f"FROM x\n{line}\n").stages[0].instructions[0]
    return apply(cfg, ins, scope if scope is not None else {}, "\\", cmd_set)


def test_config_changes() -> None:
    cfg = ImageConfig(env=("PATH=/bin", "A=old"), cmd=("sh",))
    scope = {"V": "1.2"}
    cfg = _apply(cfg, "ENV A=new B=$V", scope)
    assert cfg.env == ("PATH=/bin", "A=new", "B=1.2") and scope["B"] == "1.2"
    cfg = _apply(cfg, 'LABEL version="$V" "with space"=yes', scope)
    assert dict(cfg.labels) == {"version": "1.2", "with space": "yes"}
    cfg = _apply(cfg, "EXPOSE 80 53/udp 8000-8001")
    assert cfg.exposed_ports == ("80/tcp", "53/udp", "8000/tcp", "8001/tcp")
    cfg = _apply(cfg, "WORKDIR /srv")
    cfg = _apply(cfg, "WORKDIR app")
    assert cfg.working_dir == "/srv/app"
    cfg = _apply(cfg, 'ENTRYPOINT ["/bin/app"]')
    assert cfg.entrypoint == ("/bin/app",) and cfg.cmd is None  # inherited CMD reset
    cfg = _apply(cfg, "CMD --serve")
    assert cfg.cmd == ("/bin/sh", "-c", "--serve")
    cfg = _apply(cfg, 'SHELL ["/bin/ash", "-eo", "pipefail", "-c"]')
    assert _apply(cfg, "CMD run").cmd == ("/bin/ash", "-eo", "pipefail", "-c", "run")
    cfg = _apply(cfg, "USER nobody:nogroup")
    cfg = _apply(cfg, 'VOLUME ["/data", "/logs"]')
    cfg = _apply(cfg, "VOLUME /data /cache")
    assert cfg.user == "nobody:nogroup" and cfg.volumes == ("/data", "/logs", "/cache")
    cfg = _apply(cfg, "STOPSIGNAL SIGQUIT")
    cfg = _apply(cfg, "ONBUILD COPY . /src")
    assert cfg.stop_signal == "SIGQUIT" and cfg.onbuild == ("COPY . /src",)


def test_healthcheck() -> None:
    ins = parse("FROM x\nHEALTHCHECK --interval=1m30s --retries=3 CMD wget -q localhost\n"
                ).stages[0].instructions[0]
    hc = healthcheck(ins)
    assert hc.test == ("CMD-SHELL", "wget -q localhost")
    assert hc.interval_ns == 90 * 10**9 and hc.retries == 3
    ins = parse('FROM x\nHEALTHCHECK CMD ["true"]\n').stages[0].instructions[0]
    assert healthcheck(ins).test == ("CMD", "true")
    ins = parse("FROM x\nHEALTHCHECK NONE\n").stages[0].instructions[0]
    assert healthcheck(ins).test == ("NONE",)
    bad = parse("FROM x\nHEALTHCHECK --timeout=soon CMD true\n").stages[0].instructions[0]
    with pytest.raises(DockerfileError, match="Dockerfile:2: HEALTHCHECK: invalid duration"):
        healthcheck(bad)


def test_expose_bad_protocol_names_the_line() -> None:
    with pytest.raises(DockerfileError, match="Dockerfile:2: EXPOSE: invalid proto: xtp"):
        _apply(ImageConfig(), "EXPOSE 80/xtp")


@pytest.mark.parametrize("line", ["COPY --parents a/b /x", "COPY --exclude=*.o . /x",
                                  "ADD --checksum=sha256:00 a.tgz /x",
                                  "ADD --keep-git-dir=true repo /x"])
def test_flags_this_builder_cannot_honour_are_refused(line: str) -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: (COPY|ADD): --[a-z-]+ is not "
                                              r"supported"):
        parse(f"FROM busybox\n{line}\n")
