"""Removing images as Docker does: `rmi` (with its parent chain) and `image prune`.

    rmi NAME[:TAG]  untag; a container using the image refuses the removal of
                    its last name (409) unless forced, and then only untags.
                    Once nothing names the image, delete it and its untagged
                    parents (a build's step images) one by one, stopping at a
                    parent that is tagged, has another child, or is in use.
    rmi ID          refused (409) when a child image stands on it (even with
                    force) or, unless forced, when it has names in several
                    repositories or a container uses it.
    image prune     dangling heads (untagged, no child) and their chains; with
                    all, every unused image without children, until none is left.

"In use" means a container (the engine answers through `ImageUsers`) or a
running build (`ImageHold`): their layers are mounted, or are about to be.
Checks and deletes run under the store's lock, so a build that registers a new
image under the same lock never loses it to a prune running beside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runtime.oci import ImageNotFound
from runtime.registry.reference import try_parse
from runtime.store.db import transaction

if TYPE_CHECKING:
    from runtime.store.images import ImageFilters, ImageRecord, ImageStore

Entry = dict[str, str]


class ImageConflict(RuntimeError):
    """Docker's 409: the image cannot be removed as asked."""

    def __init__(self, ref: str, message: str) -> None:
        self.ref = ref
        super().__init__(message)

    @classmethod
    def cannot_delete(cls, ref: str, why: str) -> ImageConflict:
        return cls(ref, f"conflict: unable to delete {ref} {why}")


def short_id(image_or_container_id: str) -> str:
    return image_or_container_id.removeprefix("sha256:")[:12]


def familiar(name: str) -> str:
    r = try_parse(name)
    return r.familiar if r else name


def remove(store: ImageStore, ref: str, *, force: bool = False,
           prune: bool = True) -> list[Entry]:
    """Docker's `rmi`: a list of {"Untagged": name} / {"Deleted": id}."""
    with store.lock:
        rec = store.get(ref)
        r = try_parse(ref)
        by_tag = r is not None and not r.digest and r.tagged in rec.tags
        by_digest = r is not None and bool(r.digest) and \
            f"{r.name}@{r.digest}" in rec.repo_digests
        containers = store.users.containers_using(rec.id)
        if r is not None and (by_tag or by_digest):
            name = r.tagged if by_tag else f"{r.name}@{r.digest}"
            untag = [name, *_orphaned_digests(rec, r.name, name)]
            # Docker's isSingleReference check: the image would be left without a name.
            if not force and containers and set(untag) >= {*rec.tags, *rec.repo_digests}:
                raise ImageConflict(ref, f'conflict: unable to remove repository reference '
                                    f'"{ref}" (must force) - container '
                                    f'{short_id(containers[0])} is using its referenced '
                                    f'image {short_id(rec.id)}')
        else:
            _check_delete_by_id(store, rec, ref, containers, force)
            untag = [*rec.tags, *rec.repo_digests]
        _untag(store, untag)
        out: list[Entry] = [{"Untagged": familiar(n)} for n in untag]
        left = store.get(rec.id)
        if left.tags or left.repo_digests or not deletable(store, rec.id):
            return out  # still named, or in use: an untag is all `rmi` does
        out += delete(store, rec.id)
        if prune:
            out += delete_chain(store, rec.parent)
    return out


def _orphaned_digests(rec: ImageRecord, repo: str, removed: str) -> list[str]:
    """Digest references that go with a removed tag.

    As Docker: a repository's digests go with its last tag. Unlike Docker, the
    image's last tag takes every digest with it, so `rmi` of the last tag of a
    pushed image deletes it rather than leaving a `<none>` entry behind."""
    if "@" in removed:
        return []
    rest = [t for t in rec.tags if t != removed]
    if not rest:
        return list(rec.repo_digests)
    if any(t.rsplit(":", 1)[0] == repo for t in rest):
        return []
    return [d for d in rec.repo_digests if d.split("@", 1)[0] == repo]


def _check_delete_by_id(store: ImageStore, rec: ImageRecord, ref: str,
                        containers: Iterable[str], force: bool) -> None:
    if children(store, rec.id):
        raise ImageConflict.cannot_delete(ref, "(cannot be forced) - image has dependent "
                                          "child images")
    if force:
        return
    repos = {t.rsplit(":", 1)[0] for t in rec.tags}
    if len(repos) > 1:
        raise ImageConflict.cannot_delete(ref, "(must be forced) - image is referenced in "
                                          "multiple repositories")
    for c in containers:
        raise ImageConflict.cannot_delete(ref, f"(must be forced) - image is being used by "
                                          f"container {short_id(c)}")
    for build in store.builds_using(rec.id):
        raise ImageConflict.cannot_delete(ref, f"(must be forced) - image is being used by "
                                          f"{build}")


def _untag(store: ImageStore, names: Iterable[str]) -> None:
    with transaction(store.conn):
        for name in names:
            if "@" in name:
                repo, digest = name.split("@", 1)
                store.conn.execute("DELETE FROM image_repo_digests WHERE repo=? AND digest=?",
                                   (repo, digest))
            else:
                store.conn.execute("DELETE FROM image_tags WHERE name=?", (name,))


def children(store: ImageStore, image_id: str) -> list[str]:
    return [str(r[0]) for r in store.conn.execute("SELECT id FROM images WHERE parent=?",
                                                  (image_id,))]


def deletable(store: ImageStore, image_id: str) -> bool:
    """Nothing stands on the image: no child image, container or running build."""
    return not (children(store, image_id) or store.users.containers_using(image_id)
                or store.builds_using(image_id))


def delete(store: ImageStore, image_id: str) -> list[Entry]:
    """Delete an image record, then its layers and blobs no other image uses."""
    rec = store.get(image_id)
    with transaction(store.conn):
        store.conn.execute("DELETE FROM images WHERE id=?", (image_id,))
        orphans = [str(r[0]) for r in store.conn.execute(
            "SELECT diff_id FROM layers WHERE diff_id NOT IN "
            "(SELECT diff_id FROM image_layers)").fetchall()]
        store.conn.execute("DELETE FROM layers WHERE diff_id NOT IN "
                           "(SELECT diff_id FROM image_layers)")
    store.forget(image_id)
    for diff in orphans:
        store.layers.remove(diff)
    store.drop_unreferenced({rec.manifest_digest, rec.id, *rec.layer_blobs})
    return [{"Deleted": image_id}]


def delete_chain(store: ImageStore, parent: str) -> list[Entry]:
    """Delete untagged parents upwards while each is left with nothing on it."""
    out: list[Entry] = []
    while parent:
        try:
            rec = store.get(parent)
        except ImageNotFound:
            break
        if rec.tags or rec.repo_digests or not deletable(store, rec.id):
            break
        out += delete(store, rec.id)
        parent = rec.parent
    return out


def prune(store: ImageStore, *, all_images: bool, filters: ImageFilters) -> dict[str, Any]:
    """Delete dangling images with their chains (all unused ones with all_images).

    Passes over the listing until one deletes nothing: with all_images, deleting
    an image can make its tagged parent a head the next pass removes."""
    from runtime.store.images import ImageFilters

    deleted: list[Entry] = []
    before = store.disk_bytes()
    progress = True
    while progress:
        progress = False
        for listed in store.list_images(ImageFilters(
                labels=filters.labels, created_before=filters.created_before,
                dangling=None if all_images else True)):
            with store.lock:  # checked again here: a build or a pull may have moved on
                try:
                    rec = store.get(listed.id)
                except ImageNotFound:
                    continue  # went with an earlier chain
                if (rec.tags and not all_images) or not deletable(store, rec.id):
                    continue
                names = [*rec.tags, *rec.repo_digests]
                _untag(store, names)
                deleted += [{"Untagged": familiar(n)} for n in names]
                deleted += delete(store, rec.id)
                deleted += delete_chain(store, rec.parent)
                progress = True
    store.sweep_layers()
    store.sweep_blobs()
    # Measured once around the whole prune (a pull meanwhile can only make it smaller).
    return {"ImagesDeleted": deleted or None,
            "SpaceReclaimed": max(0, before - store.disk_bytes())}
