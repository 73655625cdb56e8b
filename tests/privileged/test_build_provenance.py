"""Trusted builds: a build records repository, commit and Dockerfile digest as labels;
after a push, `berth attest` signs the SLSA provenance and pushes it next to the image
(as cosign does), and `berth inspect --provenance` verifies and shows it.

The CLI sends the context with its .git; berthd reads the remote and commit from
it (never running git on it) unless --label names them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import BERTH, ROOT, Berthd, berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox
from tests.privileged.test_daemon_registry import start_registry_in

REMOTE = "https://git.example/team/app.git"


@pytest.fixture
def setup(netns: NetNS) -> Iterator[tuple[Berthd, str, Path, NetNS]]:
    with berth_workdir() as work:
        registry, address = start_registry_in(netns, work)
        try:
            with start_berthd(netns, work, "--insecure-registry", address) as d:
                import_busybox(d.berth, work)
                yield d, address, work, netns
        finally:
            registry.terminate()
            registry.wait(timeout=20)


def git(ctx: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(ctx), "-c", "user.email=t@example", "-c",
                           "user.name=t", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_build_labels_then_signed_provenance(setup: tuple[Berthd, str, Path, NetNS]) -> None:
    d, registry, work, netns = setup
    ctx = work / "repo"
    ctx.mkdir()
    dockerfile = b"FROM busybox\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n"
    (ctx / "Dockerfile").write_bytes(dockerfile)
    git(ctx, "init", "-q")
    git(ctx, "remote", "add", "origin", REMOTE)
    git(ctx, "add", "Dockerfile")
    git(ctx, "commit", "-q", "-m", "first")
    commit = git(ctx, "rev-parse", "HEAD")
    ref = f"{registry}/team/app:1"

    d.berth("build", "-t", ref, str(ctx), timeout=180)
    labels = json.loads(d.berth("inspect", ref).stdout)[0]["Config"]["Labels"]
    digest = "sha256:" + hashlib.sha256(dockerfile).hexdigest()
    assert labels == {"org.opencontainers.image.source": REMOTE,
                      "org.opencontainers.image.revision": commit,
                      "dev.berth.dockerfile.digest": digest}
    # A context below the repository's top: the CLI finds the checkout (berthd cannot).
    sub = ctx / "services" / "api"
    sub.mkdir(parents=True)
    (sub / "Dockerfile").write_bytes(b"FROM busybox\nLABEL part=api\n")
    d.berth("build", "-t", "api:1", str(sub), timeout=180)
    api = json.loads(d.berth("inspect", "api:1").stdout)[0]["Config"]["Labels"]
    assert api["org.opencontainers.image.revision"] == commit
    assert api["org.opencontainers.image.source"] == REMOTE
    # --label wins over what the git checkout says.
    d.berth("build", "--label", "org.opencontainers.image.source=https://mirror/app.git",
            "-t", "other:1", str(ctx), timeout=180)
    other = json.loads(d.berth("inspect", "other:1").stdout)[0]["Config"]["Labels"]
    assert other["org.opencontainers.image.source"] == "https://mirror/app.git"

    pushed = d.berth("push", ref, timeout=120).stdout
    keys = work / "keys"
    keys.mkdir()
    env = {**os.environ, "COSIGN_PASSWORD": "pw", "BERTH_CONFIG": str(work / "cfg"),
           "HOME": str(work)}

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Registry verbs talk to the registry in the test's namespace directly.
        r = subprocess.run(netns.argv(*BERTH, "-H", d.host, *args), capture_output=True,
                           text=True, env=env, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
        if check and r.returncode:
            raise AssertionError(f"berth {args} failed:\n{r.stdout}{r.stderr}")
        return r

    cli("generate-key-pair", "--output-key-prefix", str(keys / "builder"))
    cli("generate-key-pair", "--output-key-prefix", str(keys / "stranger"))
    missing = cli("inspect", "--provenance", "--key", str(keys / "builder.pub"),
                  "--allow-insecure-registry", ref, check=False)
    assert missing.returncode == 1 and "no provenance attestation found" in missing.stderr
    # berthd's own record of the build (what attest signs).
    record = json.loads(d.berth("inspect", "--provenance", ref).stdout)["Provenance"]
    assert (record["source_repo"], record["commit"]) == (REMOTE, commit)

    attested = cli("attest", "--key", str(keys / "builder.key"), "--allow-insecure-registry",
                   ref).stdout
    manifest_digest = attested.strip().rsplit("@", 1)[1]
    assert manifest_digest in pushed

    shown = json.loads(cli("inspect", "--provenance", "--key", str(keys / "builder.pub"),
                           "--allow-insecure-registry", ref).stdout)
    assert shown["Digest"] == manifest_digest
    statements = shown["Statements"]
    assert len(statements) == 1
    stmt = statements[0]
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    assert stmt["subject"][0]["digest"]["sha256"] == manifest_digest.split(":", 1)[1]
    params = stmt["predicate"]["buildDefinition"]["externalParameters"]
    assert params["source"] == {"uri": REMOTE, "digest": {"gitCommit": commit}}
    assert params["dockerfile"]["digest"]["sha256"] == digest.split(":", 1)[1]
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [dep["uri"] for dep in deps] == ["busybox"]

    wrong = cli("inspect", "--provenance", "--key", str(keys / "stranger.pub"),
                "--allow-insecure-registry", ref, check=False)
    assert wrong.returncode == 1 and "not signed by a trusted key" in wrong.stderr
    assert "Traceback" not in wrong.stderr
