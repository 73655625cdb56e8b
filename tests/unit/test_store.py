"""The image store: records, tags, resolve, rmi/prune semantics, archives."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from runtime.oci import Descriptor, ImageNotFound, Manifest, sha256_digest
from runtime.store import views
from runtime.store.archive import ArchiveError, apply_changes, import_rootfs, load, save
from runtime.store.blobs import BlobStore, DigestMismatch
from runtime.store.commit import HistoryEntry, IdShift, commit_layer, create_image
from runtime.store.images import ImageConflict, ImageFilters, ImageStore, created_unix


def rootfs_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o755
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Users:
    def __init__(self) -> None:
        self.using: dict[str, list[str]] = {}

    def containers_using(self, image_id: str) -> Sequence[str]:
        return self.using.get(image_id, [])


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def store(tmp_path: Path, users: Users) -> ImageStore:
    return ImageStore(tmp_path / "root", users=users)


def imported(store: ImageStore, tag: str | None = "app:1", content: bytes = b"v1") -> str:
    data = rootfs_tar({"bin/app": content})
    return import_rootfs(store, io.BytesIO(data), tag=tag,
                         changes=['CMD ["/bin/app"]', "ENV A=1", "LABEL team=core"]).id


def test_import_then_resolve_by_every_name(store: ImageStore) -> None:
    iid = imported(store)
    for ref in ("app:1", "docker.io/library/app:1", iid, iid[7:], iid[7:19]):
        r = store.resolve(ref)
        assert r.id == iid
        assert r.config.cmd == ("/bin/app",)
        assert r.config.env == ("A=1",)
        assert (r.layer_dirs[0] / "bin/app").read_bytes() == b"v1"
    digest = store.get(iid).manifest_digest
    assert store.resolve(f"app@{digest}").id == iid
    for bad in ("app:2", "nothing", "sha256:" + "0" * 64, "0000"):
        with pytest.raises(ImageNotFound):
            store.resolve(bad)


def test_tag_moves_atomically_and_old_image_dangles(store: ImageStore) -> None:
    a = imported(store, "app:1", b"one")
    b = imported(store, "app:1", b"two")
    assert store.resolve("app:1").id == b
    assert store.get(a).dangling
    assert [r.id for r in store.list_images(ImageFilters(dangling=True))] == [a]


def test_shared_layer_unpacked_once(store: ImageStore) -> None:
    a = imported(store, "a:1")
    b = store.tag(a, "b:1")
    assert b == "docker.io/library/b:1"
    assert len(list(store.layers.dir.iterdir())) == 1


def test_rmi_by_tag_untags_then_deletes_last(store: ImageStore) -> None:
    iid = imported(store, "app:1")
    store.tag("app:1", "app:2")
    assert store.remove("app:1") == [{"Untagged": "app:1"}]
    out = store.remove("app:2")
    assert out == [{"Untagged": "app:2"}, {"Deleted": iid}]
    assert store.list_images() == []
    assert list(store.layers.dir.iterdir()) == []
    assert list(store.blobs) == []


def test_rmi_by_id_with_two_repos_needs_force(store: ImageStore) -> None:
    iid = imported(store, "app:1")
    store.tag(iid, "other:1")
    with pytest.raises(ImageConflict, match="must be forced"):
        store.remove(iid)
    assert store.resolve("other:1").id == iid
    assert {"Deleted": iid} in store.remove(iid, force=True)


def test_image_used_by_a_container_is_never_deleted(store: ImageStore, users: Users) -> None:
    iid = imported(store, "app:1")
    users.using[iid] = ["c0ffee" * 10]
    with pytest.raises(ImageConflict, match="being used by container c0ffeec0ffee"):
        store.remove(iid)
    assert store.remove(iid, force=True) == [{"Untagged": "app:1"}]
    assert store.resolve(iid).layer_dirs[0].is_dir()
    assert store.prune()["ImagesDeleted"] is None
    users.using.clear()
    assert store.prune()["ImagesDeleted"] == [{"Deleted": iid}]


def test_prune_all_and_label_filter(store: ImageStore) -> None:
    imported(store, "keep:1", b"k")
    imported(store, None, b"dangling")
    result = store.prune()
    assert len(result["ImagesDeleted"]) == 1
    assert [views.summary(store, r)["RepoTags"] for r in store.list_images()] == [["keep:1"]]
    assert store.list_images(ImageFilters(labels=("team=core",)))
    assert not store.list_images(ImageFilters(labels=("team=web",)))
    assert store.list_images(ImageFilters(reference=("keep",)))
    store.prune(all_images=True)
    assert store.list_images() == []


def test_save_load_round_trip(store: ImageStore, tmp_path: Path) -> None:
    iid = imported(store, "app:1")
    out = tmp_path / "img.tar"
    with out.open("wb") as f:
        save(store, ["app:1"], f)
    with tarfile.open(out) as t:
        names = set(t.getnames())
        docker = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= names
    assert docker[0]["RepoTags"] == ["app:1"]
    fresh = ImageStore(tmp_path / "other")
    loaded = load(fresh, out)
    assert [(x.image.id, x.tags) for x in loaded] == [(iid, ("docker.io/library/app:1",))]
    assert fresh.resolve("app:1").config.cmd == ("/bin/app",)


def test_load_of_a_lying_archive_stores_nothing(store: ImageStore, tmp_path: Path) -> None:
    imported(store, "app:1")
    good = tmp_path / "good.tar"
    with good.open("wb") as f:
        save(store, ["app:1"], f)
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.size > 1000:  # the layer blob: same size, other bytes
                data = bytes(reversed(data))
            dst.addfile(m, io.BytesIO(data))
    docker_only = tmp_path / "docker.tar"
    with tarfile.open(bad) as src, tarfile.open(docker_only, "w") as dst:
        for m in src.getmembers():
            if m.name != "index.json":
                dst.addfile(m, src.extractfile(m))
    fresh = ImageStore(tmp_path / "fresh")
    # As an OCI layout (index.json only), the blob's name is checked.
    oci_only = tmp_path / "oci.tar"
    with tarfile.open(bad) as src, tarfile.open(oci_only, "w") as dst:
        for m in src.getmembers():
            if m.name != "manifest.json":
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(DigestMismatch):
        load(fresh, oci_only)
    # As a docker-archive the layer is hashed and checked against the config's DiffID.
    with pytest.raises(ValueError, match=r"diff id|tar"):
        load(fresh, docker_only)
    assert fresh.list_images() == []
    assert list(fresh.layers.dir.iterdir()) == []
    with pytest.raises(ArchiveError, match="neither"):
        load(fresh, io.BytesIO(rootfs_tar({"x": b"1"})))  # type: ignore[arg-type]


def test_commit_layer_round_trips_whiteouts_and_history(store: ImageStore,
                                                        tmp_path: Path) -> None:
    base = imported(store, "base:1")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/conf").write_text("c")
    layer = commit_layer(store, upper)
    rec = create_image(store, base=base, layers=[layer], tags=["child:1"])
    r = store.resolve("child:1")
    assert len(r.layer_dirs) == 2 and (r.layer_dirs[1] / "etc/conf").read_text() == "c"
    assert r.config.cmd == ("/bin/app",)
    hist = views.history(store, rec)
    assert hist[0]["Id"] == rec.id and len(hist) == 2
    doc = views.inspect(store, rec)
    assert doc["RootFS"]["Layers"] == list(rec.diff_ids)
    assert doc["RepoTags"] == ["child:1"] and doc["Config"]["Cmd"] == ["/bin/app"]
    # the same tree commits to the same layer
    assert commit_layer(store, upper).diff_id == layer.diff_id


def test_apply_changes() -> None:
    cfg = apply_changes({}, ["CMD echo hi", "ENTRYPOINT [\"/init\"]", "EXPOSE 80",
                             "ENV A=1 B=2", "WORKDIR /srv", "USER 1000", "VOLUME /data"])
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"] and cfg["Entrypoint"] == ["/init"]
    assert cfg["ExposedPorts"] == {"80/tcp": {}} and cfg["Env"] == ["A=1", "B=2"]
    assert cfg["WorkingDir"] == "/srv" and cfg["User"] == "1000"
    assert cfg["Volumes"] == {"/data": {}}
    with pytest.raises(ValueError, match="RUN is not one of"):
        apply_changes({}, ["RUN rm -rf /"])


def test_crash_leftovers_are_swept(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    ingest = store.blobs.ingest_dir
    (ingest / "tmp-deadbeef").write_bytes(b"half a blob")
    old, fresh = ingest / ("a" * 64 + ".partial"), ingest / ("b" * 64 + ".partial")
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (0, 0))
    (store.layers.dir / ".tmp-0123").mkdir()
    store = ImageStore(tmp_path / "root")  # a restart after a crash
    assert sorted(p.name for p in ingest.iterdir()) == [old.name, fresh.name]
    assert list(store.layers.dir.iterdir()) == []
    store.prune()
    assert [p.name for p in ingest.iterdir()] == [fresh.name]  # resumable, still young


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root")
def test_commit_shifts_a_user_namespaced_upper_dir_back(store: ImageStore,
                                                        tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "mine").write_text("x")
    os.chown(upper / "mine", 100000 + 1000, 100000 + 1000)
    (upper / "stranger").write_text("y")
    os.chown(upper / "stranger", 5, 5)
    layer = commit_layer(store, upper, IdShift(100000))
    with tarfile.open(store.blobs.path(layer.blob)) as t:
        owners = {m.name: (m.uid, m.gid) for m in t.getmembers()}
    assert owners == {"mine": (1000, 1000), "stranger": (65534, 65534)}


def test_commit_reads_userxattr_overlay_opaque_dirs(store: ImageStore, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    try:
        os.setxattr(upper / "d", "user.overlay.opaque", b"y")
        os.setxattr(upper / "d", "user.note", b"kept")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    layer = commit_layer(store, upper)
    with tarfile.open(store.blobs.path(layer.blob)) as t:
        members = {m.name: m.pax_headers for m in t.getmembers()}
    assert "d/.wh..wh..opq" in members
    assert members["d"] == {"SCHILY.xattr.user.note": "kept"}


def test_rmi_by_repo_digest_removes_only_that_reference(store: ImageStore) -> None:
    iid = imported(store, "app:1")
    store.add_repo_digest(iid, "r.example/app", "sha256:" + "1" * 64)
    store.add_repo_digest(iid, "r.example/app", "sha256:" + "2" * 64)
    out = store.remove("r.example/app@sha256:" + "1" * 64)
    assert out == [{"Untagged": "r.example/app@sha256:" + "1" * 64}]
    assert store.get(iid).repo_digests == ("r.example/app@sha256:" + "2" * 64,)
    assert store.remove("app:1")[-1] == {"Deleted": iid}


def test_blob_writer_verifies_and_resumes(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = os.urandom(10_000)
    digest = sha256_digest(data)
    with blobs.writer(digest, len(data), resume=True) as w:
        w.write(data[:4000])  # interrupted here: the partial stays
    with blobs.writer(digest, len(data), resume=True) as w:
        assert w.offset == 4000
        # a concurrent download of the same blob does not share the partial file
        with blobs.writer(digest, len(data), resume=True) as other:
            assert other.offset == 0 and other.path != w.path
        w.write(data[4000:])
        assert w.commit() == digest
    assert blobs.read(digest) == data
    with pytest.raises(DigestMismatch), blobs.writer(digest, len(data), resume=True) as w:
        w.write(bytes(reversed(data)))
        w.commit()
    assert list(blobs.ingest_dir.iterdir()) == []  # wrong bytes are never kept to resume


def test_time_filters(store: ImageStore) -> None:
    old = create_image(store, base=None, layers=[], created="2020-01-01T00:00:00.123456789Z",
                       tags=["old:1"])
    new = create_image(store, base=None, layers=[], created="2026-01-01T00:00:00Z",
                       tags=["new:1"])
    cut = created_unix("2023-01-01T00:00:00Z")
    assert [r.id for r in store.list_images(ImageFilters(created_before=cut))] == [old.id]
    assert [r.id for r in store.list_images(ImageFilters(created_after=cut))] == [new.id]
    assert views.parse_timestamp("24h", now=100_000.0) == 100_000.0 - 86400
    assert views.parse_timestamp("1h30m", now=10_000.0) == 10_000.0 - 5400
    assert views.parse_timestamp("1700000000") == 1700000000.0
    assert views.parse_timestamp("2023-01-01T00:00:00Z") == cut
    with pytest.raises(ValueError, match="not a timestamp"):
        views.parse_timestamp("yesterday")
    store.prune(all_images=True, filters=ImageFilters(created_before=cut))
    assert [r.id for r in store.list_images()] == [new.id]


def test_same_image_in_another_form_replaces_its_blobs(store: ImageStore, tmp_path: Path) -> None:
    iid = imported(store, "app:1")
    plain = store.get(iid)
    manifest = store.manifest(iid)[1]
    # the same layer, gzip-compressed: a registry's form of the same image
    with store.blobs.open(plain.layer_blobs[0]) as f:
        gz = store.blobs.put(gzip.compress(f.read(), 1))
    layer = manifest.layers[0]
    m2 = Manifest(manifest.media_type, manifest.config, (Descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip", gz, store.blobs.size(gz)),))
    rec = store.add_image(m2.to_bytes(), tags=["app:1"])
    assert rec.id == iid and rec.layer_blobs == (gz,)
    assert not store.blobs.has(layer.digest) and not store.blobs.has(plain.manifest_digest)
    assert store.resolve("app:1").layer_dirs == store.resolve(iid).layer_dirs
    with (tmp_path / "x.tar").open("wb") as f:
        save(store, ["app:1"], f)  # every blob the image names is there


def test_layers_and_blobs_are_private(store: ImageStore) -> None:
    imported(store)
    assert stat.S_IMODE(store.layers.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.blobs.root.stat().st_mode) == 0o700


def chain(store: ImageStore, base: str | None, *steps: str, tag: str | None = None) -> list[str]:
    """A build's images: one per step, each the parent of the next (the last tagged)."""
    ids: list[str] = []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        rec = create_image(store, base=ids[-1] if ids else base, layers=[],
                           history=[HistoryEntry(step, empty_layer=True)],
                           tags=[tag] if tag and last else [])
        ids.append(rec.id)
    return ids


def test_rmi_of_the_last_tag_a_container_uses_needs_force(store: ImageStore,
                                                           users: Users) -> None:
    iid = imported(store, "app:1")
    container = "c0ffee" * 10
    users.using[iid] = [container]
    with pytest.raises(ImageConflict) as e:
        store.remove("app:1")
    assert str(e.value) == (
        'conflict: unable to remove repository reference "app:1" (must force) - container '
        f"c0ffeec0ffee is using its referenced image {iid[7:19]}")
    assert store.get("app:1").id == iid
    # A digest in another repository does not keep the image named once its last tag goes.
    store.add_repo_digest(iid, "r.example/app", "sha256:" + "1" * 64)
    with pytest.raises(ImageConflict, match="must force"):
        store.remove("app:1")
    store.tag(iid, "app:2")  # another name left: untagging one needs no force
    assert store.remove("app:2") == [{"Untagged": "app:2"}]
    assert store.remove("app:1", force=True) == [
        {"Untagged": "app:1"}, {"Untagged": "r.example/app@sha256:" + "1" * 64}]
    assert store.get(iid).dangling and store.resolve(iid).layer_dirs[0].is_dir()


def test_rmi_of_a_built_image_deletes_its_untagged_parents(store: ImageStore) -> None:
    base = imported(store, "base:1")
    steps = chain(store, base, "ENV A=1", "ENV B=2", "CMD x", tag="app:1")
    assert store.remove("app:1") == [{"Untagged": "app:1"},
                                     *({"Deleted": i} for i in reversed(steps))]
    assert [r.id for r in store.list_images(ImageFilters(include_intermediate=True))] == [base]


def test_parent_chain_stops_at_a_tagged_shared_or_used_parent(store: ImageStore,
                                                               users: Users) -> None:
    base = imported(store, "base:1")
    a1, a2, a3 = chain(store, base, "ENV A=1", "ENV A=2", "ENV A=3", tag="a:1")
    b1, = chain(store, a1, "ENV B=1", tag="b:1")  # a second child of a1
    users.using[a2] = ["feed" * 16]
    assert store.remove("a:1") == [{"Untagged": "a:1"}, {"Deleted": a3}]
    users.using.clear()
    assert store.remove(a2) == [{"Deleted": a2}]  # a1 still has the child b1
    assert store.remove("b:1") == [{"Untagged": "b:1"}, {"Deleted": b1}, {"Deleted": a1}]
    assert store.get("base:1").id == base  # tagged: kept
    c1, c2 = chain(store, base, "ENV C=1", "ENV C=2", tag="c:1")
    assert store.remove("c:1", prune=False) == [{"Untagged": "c:1"}, {"Deleted": c2}]
    assert store.get(c1).dangling


def test_rmi_by_id_of_an_image_with_children_is_refused_even_forced(store: ImageStore) -> None:
    base = imported(store, "base:1")
    chain(store, base, "ENV A=1", tag="app:1")
    for force in (False, True):
        with pytest.raises(ImageConflict, match=r"\(cannot be forced\) - image has dependent "
                                                r"child images"):
            store.remove(base, force=force)
    assert store.get("base:1").id == base


def test_prune_removes_whole_dangling_chains_in_one_call(store: ImageStore,
                                                         users: Users) -> None:
    base = imported(store, "base:1")
    failed = chain(store, base, "ENV A=1", "ENV A=2", "RUN false")  # a failed build's steps
    kept = chain(store, base, "ENV K=1", "ENV K=2", tag="kept:1")
    used = chain(store, base, "ENV U=1", "ENV U=2")
    users.using[used[-1]] = ["beef" * 16]
    # `images` shows the heads; `images -a` the intermediate steps too.
    shown = {r.id for r in store.list_images()}
    assert shown == {base, failed[-1], kept[-1], used[-1]}
    every = {r.id for r in store.list_images(ImageFilters(include_intermediate=True))}
    assert every == {base, *failed, *kept, *used}
    dangling = ImageFilters(dangling=True, include_intermediate=True)
    assert {r.id for r in store.list_images(dangling)} == {failed[-1], used[-1]}
    result = store.prune()
    assert result["ImagesDeleted"] == [{"Deleted": i} for i in reversed(failed)]
    assert result["SpaceReclaimed"] > 0
    assert {r.id for r in store.list_images(ImageFilters(include_intermediate=True))} == \
        {base, *kept, *used}
    assert store.prune()["ImagesDeleted"] is None


def test_images_held_by_a_running_build_survive_prune(store: ImageStore) -> None:
    base = imported(store, None)
    with store.hold("build 1") as hold:
        hold.add(base)
        steps = chain(store, base, "ENV A=1", "ENV A=2")
        hold.add(steps[-1])
        assert store.prune()["ImagesDeleted"] is None
        with pytest.raises(ImageConflict, match="being used by build 1"):
            store.remove(steps[-1])
        assert store.builds_using(steps[-1]) == ["build 1"]
    assert store.builds_using(steps[-1]) == []
    assert store.prune()["ImagesDeleted"] == [{"Deleted": i} for i in (*reversed(steps), base)]


def test_history_names_each_step_by_its_image(store: ImageStore) -> None:
    base = imported(store, "base:1")
    steps = chain(store, base, "ENV A=1", "CMD x", tag="app:1")
    hist = views.history(store, store.get("app:1"))
    assert [h["Id"] for h in hist] == [*reversed(steps), base]
    assert [h["Tags"] for h in hist] == [["app:1"], None, ["base:1"]]
    assert hist[0]["CreatedBy"] == "CMD x"
