"""`pull` and `push`: whole images between a registry and the local store.

pull: manifest (index -> the platform's manifest) -> trust gate (policy,
signatures) -> config and layers fetched in parallel into the blob store
(each verified, pinned against GC) -> one `add_image` transaction that
unpacks the layers and moves the tag. A failure anywhere leaves no image and
no tag; verified blobs stay (a retry skips them) and a partial blob stays
resumable.

push: every blob (layers, config) checked with HEAD first, then mounted from
another repository of the same registry it is known to be in, else
uploaded; the manifest last, so the tag appears only when all blobs exist.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.oci import Descriptor, Index, Manifest, diff_ids_of, is_index
from runtime.progress import NullProgress, Progress
from runtime.registry.auth import Credentials, CredentialStore
from runtime.registry.client import RegistryClient, RegistryError
from runtime.registry.reference import Reference, parse
from runtime.store.db import schema, transaction
from runtime.store.images import ImageRecord, ImageStore

_DDL = """
CREATE TABLE IF NOT EXISTS registry_blob_sources (
  blob TEXT NOT NULL,
  domain TEXT NOT NULL,
  repo TEXT NOT NULL,
  PRIMARY KEY (blob, domain, repo)
);
"""
schema("registry", _DDL)


class TrustGate(Protocol):
    """The trust policy, asked before any layer is fetched (runtime/policy.py)."""

    async def check_pull(self, client: RegistryClient, ref: Reference,
                         manifest_digest: str) -> None: ...


@dataclass(frozen=True)
class PullResult:
    image: ImageRecord
    ref: Reference
    digest: str  # the manifest digest
    fetched: int  # blobs downloaded (the rest were already here)


@dataclass(frozen=True)
class PushResult:
    ref: Reference
    digest: str
    size: int
    uploaded: int
    mounted: int
    existed: int


def _sources_table(store: ImageStore) -> None:
    store.ensure_schema(_DDL)


def _record_sources(store: ImageStore, blobs: list[str], domain: str, repo: str) -> None:
    with store.lock, transaction(store.conn):
        store.conn.executemany("INSERT OR IGNORE INTO registry_blob_sources VALUES (?,?,?)",
                               [(b, domain, repo) for b in blobs])


def _mount_sources(store: ImageStore, blob: str, domain: str, repo: str) -> list[str]:
    rows = store.conn.execute("SELECT repo FROM registry_blob_sources WHERE blob=? AND "
                              "domain=? AND repo<>?", (blob, domain, repo)).fetchall()
    return [str(r[0]) for r in rows]


async def pull(store: ImageStore, client: RegistryClient, ref: str, *,
               progress: Progress | None = None, trust: TrustGate | None = None) -> PullResult:
    r = parse(ref)
    prog = progress or NullProgress()
    _sources_table(store)
    reference = r.digest or r.tag or "latest"
    prog.message(f"{r.tag or r.digest}: Pulling from {r.familiar_name}")
    # `digest` is what the tag points at (an index for multi-platform images):
    # the repo digest Docker shows and what signatures are made over.
    data, mt, digest = await client.get_manifest(r.domain, r.path, reference)
    if trust is not None:
        await trust.check_pull(client, r, digest)
    if is_index(data, mt):
        chosen = Index.parse(data, mt).select(client.options.platform)
        data, mt, _ = await client.get_manifest(r.domain, r.path, chosen.digest)
        if is_index(data, mt):
            raise RegistryError(str(r), "index inside an index: refusing to recurse")
    manifest = Manifest.parse(data, mt)
    if manifest.config.size > client.options.max_manifest:
        raise RegistryError(str(r), f"image config of {manifest.config.size} bytes refused")
    descs = [manifest.config, *manifest.layers]
    # Layers unpacked but not yet recorded are pinned against sweep_layers; if
    # the pull fails they are swept at once (the verified blobs stay, so a
    # retry does not download them again).
    try:
        with store.pinned(d.digest for d in descs):
            fetched = 0
            if not store.blobs.has(manifest.config.digest):
                await client.fetch_blob(r.domain, r.path, manifest.config, store.blobs)
                fetched += 1
            diff_ids = diff_ids_of(store.config_doc_of_blob(manifest.config.digest))
            if len(diff_ids) != len(manifest.layers):
                raise RegistryError(str(r), f"manifest has {len(manifest.layers)} layers, its "
                                    f"config {len(diff_ids)} diff ids")
            with store.pinned(diff_ids):
                fetched += await _fetch_layers(store, client, r, manifest, diff_ids, prog)
                _record_sources(store, [d.digest for d in descs], r.domain, r.path)
                rec = await asyncio.to_thread(
                    store.add_image, data, tags=[r.tagged] if r.tag else [],
                    repo_digest=(r.name, digest))
    except BaseException:
        await asyncio.to_thread(store.sweep_layers)
        raise
    prog.message(f"Digest: {digest}")
    prog.message(f"Status: Downloaded newer image for {r.familiar}" if fetched else
                 f"Status: Image is up to date for {r.familiar}")
    return PullResult(rec, r, digest, fetched)


async def _fetch_layers(store: ImageStore, client: RegistryClient, r: Reference,
                        manifest: Manifest, diff_ids: Sequence[str], prog: Progress) -> int:
    """Layers in parallel, each unpacked (in a thread) as soon as it has landed."""
    sem = asyncio.Semaphore(client.options.parallel)

    async def one(d: Descriptor, diff_id: str) -> bool:
        # The blob is needed even when the layer is already unpacked (from a
        # blob of another compression): save and push hand out these bytes.
        if store.blobs.has(d.digest):
            prog.done(d.digest, "Already exists")
            got = False
        else:
            async with sem:
                await client.fetch_blob(r.domain, r.path, d, store.blobs, prog)
            got = True
        prog.start(d.digest, "Extracting", None)
        # A thread cannot be cancelled: shield it and let a failing pull wait
        # for it, so that no layer lands after the failed pull swept up.
        unpack = asyncio.ensure_future(asyncio.to_thread(store.unpack_layer, d.digest, diff_id))
        unpacks.append(unpack)
        await asyncio.shield(unpack)
        prog.done(d.digest, "Pull complete")
        return got

    unpacks: list[asyncio.Future[int]] = []
    tasks = [asyncio.create_task(one(d, diff))
             for d, diff in zip(manifest.layers, diff_ids, strict=True)]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(BaseException):
            await asyncio.gather(*unpacks, return_exceptions=True)
        raise
    return sum(results)


async def push(store: ImageStore, client: RegistryClient, ref: str, *,
               progress: Progress | None = None) -> PushResult:
    r = parse(ref)
    prog = progress or NullProgress()
    _sources_table(store)
    iid = store.lookup(ref)
    data, manifest = store.manifest(iid)
    prog.message(f"The push refers to repository [{r.name}]")
    descs = [*manifest.layers, manifest.config]
    counts = {"uploaded": 0, "mounted": 0, "existed": 0}
    sem = asyncio.Semaphore(client.options.parallel)

    async def one(d: Descriptor) -> None:
        async with sem:
            counts[await _push_blob(store, client, r, d, prog)] += 1

    await asyncio.gather(*(one(d) for d in descs))
    digest = await client.put_manifest(r.domain, r.path, r.tag or "latest", data,
                                       manifest.media_type)
    _record_sources(store, [d.digest for d in descs], r.domain, r.path)
    store.add_repo_digest(iid, r.name, digest)
    prog.message(f"{r.tag or 'latest'}: digest: {digest} size: {len(data)}")
    return PushResult(r, digest, len(data), **counts)


async def _push_blob(store: ImageStore, client: RegistryClient, r: Reference,
                     d: Descriptor, prog: Progress) -> str:
    push_scope = [f"repository:{r.path}:pull,push"]
    if await client.blob_exists(r.domain, r.path, d.digest, push_scope) is not None:
        prog.done(d.digest, "Layer already exists")
        return "existed"
    location = None
    for src in _mount_sources(store, d.digest, r.domain, r.path):
        location = await client.mount_blob(r.domain, r.path, d.digest, src)
        if location is None:
            prog.done(d.digest, f"Mounted from {src}")
            return "mounted"
        break  # the registry opened an upload session instead: use it
    await client.upload_blob(r.domain, r.path, d.digest, d.size,
                             lambda: store.blobs.open(d.digest), location, prog)
    return "uploaded"


def blob_sources(store: ImageStore, blob: str) -> Iterator[tuple[str, str]]:
    _sources_table(store)
    for row in store.conn.execute("SELECT domain, repo FROM registry_blob_sources WHERE blob=?",
                                  (blob,)):
        yield str(row[0]), str(row[1])


async def login(client: RegistryClient, domain: str, username: str, password: str) -> None:
    """Check the credentials against the registry (GET /v2/), then store them (0600)."""
    store = client.credentials if isinstance(client.credentials, CredentialStore) \
        else CredentialStore()
    client.credentials = store
    previous = store.get(domain)
    store.set(domain, Credentials(username, password))
    try:
        await client.ping(domain)
    except BaseException:
        if previous is None:
            store.remove(domain)
        else:
            store.set(domain, previous)
        raise


def logout(domain: str, credentials: CredentialStore | None = None) -> bool:
    """Forget the stored credentials of `domain`; False if there were none."""
    return (credentials or CredentialStore()).remove(domain)
