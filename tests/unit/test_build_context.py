""".dockerignore, the context tar, COPY source lookup and the cache keys built on them."""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from runtime.build.cache import DDL, BuildCache, cache_key
from runtime.build.context import (
    ContextError,
    context_tar,
    extract_context,
    hash_tree,
    ignored,
    parse_dockerignore,
)
from runtime.build.copier import CopyError, context_sources, parse_chmod


@pytest.mark.parametrize(("rules", "path", "want"), [
    ("*.log", "app.log", True),
    ("*.log", "sub/app.log", False),          # Go's Match: * does not cross /
    ("**/*.log", "sub/deep/app.log", True),
    ("**/*.log", "app.log", True),
    ("node_modules", "node_modules/x/y.js", True),  # a directory covers its subtree
    ("/build/", "build/out.o", True),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "CHANGES.md", True),
    ("!README.md\n*.md", "README.md", True),   # the last matching line wins
    ("# comment\n\n.git", ".git/HEAD", True),
    ("docs/?.txt", "docs/a.txt", True),
    ("docs/?.txt", "docs/ab.txt", False),
    ("[a-c].py", "b.py", True),
    ("./tmp", "tmp/x", True),
    ("tmp\n!tmp/keep", "tmp/keep", False),
])
def test_dockerignore(rules: str, path: str, want: bool) -> None:
    assert ignored(parse_dockerignore(rules), path) is want


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main;")
    (root / "src" / "main.o").write_bytes(b"\x7fELF")
    (root / "secret.env").write_text("TOKEN=1")
    (root / "keep").mkdir()
    (root / "keep" / "tmp.log").write_text("x")
    (root / "Dockerfile").write_text("FROM busybox\n")
    (root / ".dockerignore").write_text("**/*.o\nsecret.env\nkeep\n!keep/tmp.log\nDockerfile\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o750)
    os.symlink("src/main.c", root / "link")


def _names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return set(tar.getnames())


def test_context_tar_leaves_out_ignored_files_but_keeps_dockerfile(tmp_path: Path) -> None:
    _tree(tmp_path / "ctx")
    buf = io.BytesIO()
    context_tar(tmp_path / "ctx", buf)
    names = _names(buf.getvalue())
    assert {"src/main.c", "Dockerfile", ".dockerignore", "keep/tmp.log", "run.sh",
            "link"} <= names
    assert "src/main.o" not in names and "secret.env" not in names


def test_extract_context_applies_dockerignore_and_keeps_modes(tmp_path: Path) -> None:
    _tree(tmp_path / "ctx")
    # A client that sends everything (the daemon side filters too).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tmp_path / "ctx", arcname=".")
    buf.seek(0)
    dest = tmp_path / "out"
    dest.mkdir()
    extract_context(buf, dest)
    assert (dest / "src" / "main.c").read_text() == "int main;"
    assert not (dest / "src" / "main.o").exists() and not (dest / "secret.env").exists()
    assert (dest / "keep" / "tmp.log").exists() and (dest / "Dockerfile").exists()
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o750
    assert os.readlink(dest / "link") == "src/main.c"


def test_extract_context_refuses_escaping_entries(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    (tmp_path / "out").mkdir()
    with pytest.raises(ContextError, match="not a valid tar"):
        extract_context(buf, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_extract_context_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(ContextError):
        extract_context(io.BytesIO(b"this is not a tar" * 100), tmp_path)


def test_sources_globs_missing_and_remote(tmp_path: Path) -> None:
    _tree(tmp_path)
    names = [s.name for s in context_sources(tmp_path, ["src/*.c", "run.sh"], "COPY")]
    assert names == ["src/main.c", "run.sh"]
    assert [s.name for s in context_sources(tmp_path, ["*.sh"], "COPY")] == ["run.sh"]
    assert [s.name for s in context_sources(tmp_path, ["*/main.?"], "COPY")] == [
        "src/main.c", "src/main.o"]
    with pytest.raises(CopyError, match=r"file not found in build context.*stat nope"):
        context_sources(tmp_path, ["nope"], "COPY")
    with pytest.raises(CopyError, match="no source files were specified matching"):
        context_sources(tmp_path, ["*.xyz"], "COPY")
    with pytest.raises(CopyError, match="remote URLs cannot be fetched"):
        context_sources(tmp_path, ["https://example.com/a.tgz"], "ADD")


def test_sources_never_leave_the_context(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "outside").write_text("secret")
    with pytest.raises(CopyError, match="file not found"):
        context_sources(tmp_path / "ctx", ["../outside"], "COPY")
    os.symlink(str(tmp_path), tmp_path / "ctx" / "up")
    with pytest.raises(CopyError, match="outside the build context"):
        context_sources(tmp_path / "ctx", ["up/outside"], "COPY")


def test_content_hash_follows_bytes_and_modes_not_times(tmp_path: Path) -> None:
    _tree(tmp_path)
    src = [("src", tmp_path / "src"), ("run.sh", tmp_path / "run.sh")]
    first = hash_tree(src)
    os.utime(tmp_path / "src" / "main.c", (1, 1))
    assert hash_tree(src) == first
    os.chmod(tmp_path / "run.sh", 0o755)
    assert hash_tree(src) != first
    os.chmod(tmp_path / "run.sh", 0o750)
    (tmp_path / "src" / "main.c").write_text("int main2;")
    assert hash_tree(src) != first
    (tmp_path / "src" / "main.c").write_text("int main;")
    assert hash_tree(src) == first
    (tmp_path / "src" / "new.h").write_text("")
    assert hash_tree(src) != first


def test_cache_keys() -> None:
    base = cache_key("sha256:p", "RUN make")
    assert cache_key("sha256:p", "RUN make") == base
    assert cache_key("sha256:q", "RUN make") != base            # another parent
    assert cache_key("sha256:p", "RUN make ") != base           # another instruction
    assert cache_key("sha256:p", "RUN make", "sha256:c") != base  # other content read
    assert cache_key("sha256:p", "RUN make", "", ["V=1"]) != cache_key(
        "sha256:p", "RUN make", "", ["V=2"])                    # build args RUN sees


def test_cache_records() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(DDL)
    cache = BuildCache(conn)
    assert cache.get("k") is None
    cache.put("k", "sha256:a")
    cache.put("k", "sha256:b")
    assert cache.get("k") == "sha256:b"
    cache.forget("k")
    assert cache.get("k") is None


def test_chmod_values() -> None:
    assert parse_chmod("0755") == 0o755 and parse_chmod(None) is None
    with pytest.raises(CopyError, match="octal"):
        parse_chmod("u+x")


def _git_tree(root: Path, head: str, config: str, refs: dict[str, str],
              packed: str = "") -> Path:
    git = root / ".git"
    git.mkdir(parents=True)
    (git / "HEAD").write_text(head)
    (git / "config").write_text(config)
    (git / "packed-refs").write_text(packed)
    for name, sha in refs.items():
        (git / name).parent.mkdir(parents=True, exist_ok=True)
        (git / name).write_text(sha + "\n")
    return root


SHA = "0123456789abcdef0123456789abcdef01234567"


def test_git_source_read_from_the_context(tmp_path: Path) -> None:
    from runtime.build.provenance import REVISION_LABEL, SOURCE_LABEL, git_source_in_tree

    cfg = ('[core]\n\tbare = false\n[remote "upstream"]\n\turl = https://up/x.git\n'
           '[remote "origin"]\n\turl = git@git.example:team/app.git\n'
           '\tfetch = +refs/heads/*:refs/remotes/origin/*\n[core]\n\turl = nope\n')
    loose = _git_tree(tmp_path / "a", "ref: refs/heads/main\n", cfg, {"refs/heads/main": SHA})
    assert git_source_in_tree(loose) == {REVISION_LABEL: SHA,
                                         SOURCE_LABEL: "git@git.example:team/app.git"}
    packed = _git_tree(tmp_path / "b", "ref: refs/heads/dev\n", "", {},
                       f"# pack-refs with: peeled\n{SHA} refs/heads/dev\n")
    assert git_source_in_tree(packed) == {REVISION_LABEL: SHA}
    detached = _git_tree(tmp_path / "c", SHA + "\n", "", {})
    assert git_source_in_tree(detached) == {REVISION_LABEL: SHA}
    # Not a commit, a ref walking out of .git, or no .git: no labels.
    assert git_source_in_tree(_git_tree(tmp_path / "d", "garbage\n", "", {})) == {}
    assert git_source_in_tree(_git_tree(tmp_path / "e", "ref: refs/../../../etc/passwd\n",
                                         "", {})) == {}
    assert git_source_in_tree(tmp_path / "none") == {}
