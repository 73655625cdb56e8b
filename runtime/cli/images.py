"""Image verbs: images, load, import, save, rmi, history, tag, image inspect/prune."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import IO, Any

from runtime.cli.common import (
    Context,
    UsageError,
    add_verb,
    ago,
    err,
    human_size,
    out,
    parse_filters,
    print_json,
    render,
    short_id,
    table,
)
from runtime.client import DaemonError, Response, quote_id


def split_ref(ref: str) -> tuple[str, str]:
    """'host:5000/name:tag' -> ('host:5000/name', 'tag'); the tag defaults to latest."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return name, tag


def progress_messages(response: Response) -> Iterator[str]:
    """Text of a JSON progress stream (load, import); errors in it raise DaemonError."""
    for doc in response.json_lines():
        if not isinstance(doc, dict):
            continue
        if doc.get("error") or doc.get("errorDetail"):
            detail = doc.get("errorDetail") or {}
            raise DaemonError(500, str(detail.get("message") or doc.get("error")))
        text = doc.get("stream") or doc.get("status")
        if text:
            yield str(text).rstrip("\n")


def _input(path: str | None) -> IO[bytes]:
    if path in (None, "-"):
        if sys.stdin.isatty():
            raise UsageError("requested load from stdin, but stdin is a terminal: "
                             "give -i FILE or pipe a tar")
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot open {path}: {e.strerror}") from e


def cmd_images(args: argparse.Namespace, ctx: Context) -> int:
    filters = list(args.filter)
    if args.reference:
        filters.append(f"reference={args.reference}")
    images = ctx.client.get("/images/json", {"all": args.all,
                                             "filters": parse_filters(filters)})
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for img in images:
        tags = img.get("RepoTags") or ["<none>:<none>"]
        for t in tags:
            repo, tag = split_ref(t) if t != "<none>:<none>" else ("<none>", "<none>")
            rows.append((repo, tag, img))
    if args.quiet:
        seen: set[str] = set()
        for _, _, img in rows:
            ident = img["Id"] if args.no_trunc else short_id(img["Id"])
            if ident not in seen:
                seen.add(ident)
                out(ident)
        return 0
    if args.format:
        for repo, tag, img in rows:
            out(render(args.format, {**img, "Repository": repo, "Tag": tag,
                                     "ID": short_id(img["Id"])}))
        return 0
    out(table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
              [[repo, tag, img["Id"] if args.no_trunc else short_id(img["Id"]),
                ago(img.get("Created", 0)), human_size(img.get("Size", 0))]
               for repo, tag, img in rows]))
    return 0


def cmd_load(args: argparse.Namespace, ctx: Context) -> int:
    source = _input(args.input)
    try:
        response = ctx.client.call("POST", "/images/load", {"quiet": args.quiet}, body=source,
                                   headers={"Content-Type": "application/x-tar"})
        for line in progress_messages(response):
            out(line)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return 0


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, Any] = {"fromSrc": "-", "message": args.message,
                              "changes": list(args.change)}
    if args.reference:
        params["repo"], params["tag"] = split_ref(args.reference)
    source = _input(args.file)
    try:
        response = ctx.client.call("POST", "/images/create", params, body=source,
                                   headers={"Content-Type": "application/x-tar"})
        for line in progress_messages(response):
            out(line)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return 0


def cmd_save(args: argparse.Namespace, ctx: Context) -> int:
    if args.output is None and sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal: give -o FILE or redirect")
    response = ctx.client.call("GET", "/images/get", {"names": list(args.images)})
    target = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    try:
        for chunk in response.chunks():
            target.write(chunk)
    finally:
        if args.output:
            target.close()
    return 0


def cmd_rmi(args: argparse.Namespace, ctx: Context) -> int:
    status = 0
    for image in args.images:
        try:
            result = ctx.client.delete(f"/images/{quote_id(image)}",
                                       {"force": args.force, "noprune": args.no_prune})
        except DaemonError as e:
            err(str(e))
            status = 1
            continue
        for entry in result or []:
            for key in ("Untagged", "Deleted"):
                if entry.get(key):
                    out(f"{key}: {entry[key]}")
    return status


def cmd_history(args: argparse.Namespace, ctx: Context) -> int:
    layers = ctx.client.get(f"/images/{quote_id(args.image)}/history")
    if args.quiet:
        for layer in layers:
            out(layer["Id"] if args.no_trunc else short_id(layer["Id"]))
        return 0
    rows = []
    for layer in layers:
        ident = layer.get("Id") or "<missing>"
        if ident != "<missing>" and not args.no_trunc:
            ident = short_id(ident)
        created_by = layer.get("CreatedBy", "")
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        created = layer.get("Created", 0)
        # the names `docker history --format` templates use
        rows.append({"ID": ident, "CreatedSince": ago(created) if args.human else str(created),
                     "CreatedAt": str(created), "CreatedBy": created_by,
                     "Size": human_size(layer.get("Size", 0)) if args.human
                     else str(layer.get("Size")),
                     "Comment": layer.get("Comment", "")})
    if args.format:
        for row in rows:
            out(render(args.format, row))
        return 0
    out(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
              [[r["ID"], r["CreatedSince"], r["CreatedBy"], r["Size"], r["Comment"]]
               for r in rows]))
    return 0


def print_progress(response: Response, quiet: bool) -> None:
    """Docker's pull/push progress, one line per change (no cursor tricks)."""
    last: dict[str, str] = {}
    for doc in response.json_lines():
        if not isinstance(doc, dict):
            continue
        if doc.get("error") or doc.get("errorDetail"):
            detail = doc.get("errorDetail") or {}
            raise DaemonError(500, str(detail.get("message") or doc.get("error")))
        status = str(doc.get("status") or doc.get("stream") or "").rstrip("\n")
        ident = str(doc.get("id") or "")
        if quiet or not status or last.get(ident) == status:
            continue
        last[ident] = status
        out(f"{ident}: {status}" if ident else status)


def cmd_pull(args: argparse.Namespace, ctx: Context) -> int:
    repo, tag = split_ref(args.image) if "@" not in args.image else (args.image, "")
    response = ctx.client.call("POST", "/images/create", {"fromImage": repo, "tag": tag or None})
    print_progress(response, args.quiet)
    if args.quiet:
        out(args.image)
    return 0


def cmd_push(args: argparse.Namespace, ctx: Context) -> int:
    response = ctx.client.call("POST", f"/images/{quote_id(args.image)}/push")
    print_progress(response, args.quiet)
    return 0


def cmd_tag(args: argparse.Namespace, ctx: Context) -> int:
    repo, tag = split_ref(args.target)
    ctx.client.call("POST", f"/images/{quote_id(args.source)}/tag",
                    {"repo": repo, "tag": tag}).read()
    return 0


def cmd_image_inspect(args: argparse.Namespace, ctx: Context) -> int:
    found = []
    for name in args.images:
        found.append(ctx.client.get(f"/images/{quote_id(name)}/json"))
    if args.format:
        for obj in found:
            out(render(args.format, obj))
    else:
        print_json(found)
    return 0


def cmd_image_prune(args: argparse.Namespace, ctx: Context) -> int:
    filters = list(args.filter) + ([] if args.all else ["dangling=true"])
    result = ctx.client.post("/images/prune", {"filters": parse_filters(filters)})
    for entry in result.get("ImagesDeleted") or []:
        for key in ("Untagged", "Deleted"):
            if entry.get(key):
                out(f"{key}: {entry[key]}")
    out(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed', 0))}")
    return 0


def _images_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show intermediate images too")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("-f", "--filter", action="append", default=[], help="key=value")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate")
    p.add_argument("--digests", action="store_true", help="accepted for compatibility")
    p.add_argument("--format", help="Go-template subset, e.g. '{{.Repository}}'")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def register(sub: Any) -> None:
    _images_flags(add_verb(sub, "images", cmd_images, "List images"))
    _register_common(sub)


def _register_common(sub: Any, rm_name: str = "rmi") -> None:
    p = add_verb(sub, "pull", cmd_pull, "Pull an image from a registry (through berthd)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    p = add_verb(sub, "push", cmd_push, "Push an image to a registry (through berthd)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("image", metavar="NAME[:TAG]")
    p = add_verb(sub, "load", cmd_load, "Load images from a tar (docker-archive or OCI layout)")
    p.add_argument("-i", "--input", help="read from FILE instead of stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p = add_verb(sub, "import", cmd_import, "Create an image from a rootfs tar")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="Dockerfile instruction to apply (CMD, ENV, WORKDIR, ...)")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("--platform", help="accepted for compatibility (linux only)")
    p.add_argument("file", metavar="FILE|-")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    p = add_verb(sub, "save", cmd_save, "Write images to a tar (docker-archive)")
    p.add_argument("-o", "--output", help="write to FILE instead of stdout")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p = add_verb(sub, rm_name, cmd_rmi, "Remove images")
    p.add_argument("-f", "--force", action="store_true", help="force removal")
    p.add_argument("--no-prune", action="store_true", help="keep untagged parents")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p = add_verb(sub, "history", cmd_history, "Show the layers of an image")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("-H", "--human", action=argparse.BooleanOptionalAction, default=True,
                   help="human-readable sizes and dates (default)")
    p.add_argument("--format", help="Go-template subset, e.g. '{{.CreatedBy}}'")
    p.add_argument("image", metavar="IMAGE")
    p = add_verb(sub, "tag", cmd_tag, "Give an image another name")
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def register_group(sub: Any) -> None:
    """`berth image ls|inspect|rm|prune|load|import|save|history|tag`."""
    group = sub.add_parser("image", help="Manage images", description="Manage images")
    inner = group.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    _images_flags(add_verb(inner, "ls", cmd_images, "List images", aliases=("list",)))
    _register_common(inner, rm_name="rm")
    p = add_verb(inner, "inspect", cmd_image_inspect, "Show images as JSON")
    p.add_argument("-f", "--format", help="Go-template subset")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p = add_verb(inner, "prune", cmd_image_prune, "Remove unused images")
    p.add_argument("-a", "--all", action="store_true", help="not only dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], help="key=value")
