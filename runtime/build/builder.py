"""The builder: run a parsed Dockerfile step by step, one image per step, cached.

Flow per stage: FROM resolves the base (scratch, an earlier stage, or an
image in the store; nothing is pulled: there is no network) and runs the
base's ONBUILD triggers. Then each instruction:

    key = cache_key(parent image id, instruction after substitution, content read)
    hit (and not --no-cache) -> " ---> Using cache", reuse that image
    miss -> RUN: a container through the engine, its upper dir committed as a layer
            COPY/ADD/WORKDIR: a staging tree committed as a layer
            others: only the config changes
         -> create_image(parent + layer, new config, history) ; remember the key

Tags go on the final image only after every step succeeded: a failed build
tags nothing (its finished steps stay cached, as Docker's do).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import posixpath
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from runtime.build import config as cfgmod
from runtime.build.cache import BuildCache, cache_key
from runtime.build.context import hash_tree
from runtime.build.copier import (
    CopyError,
    Owner,
    Source,
    Stager,
    context_sources,
    parse_chmod,
    parse_chown,
    view_sources,
)
from runtime.build.engine import BUILD_LABEL, RunRequest, StepRunner
from runtime.build.parser import (
    Dockerfile,
    DockerfileError,
    Instruction,
    Keyword,
    Stage,
    parse_trigger,
)
from runtime.build.view import LayerView
from runtime.build.words import SubstitutionError, expand, words
from runtime.container.errors import ContainerError
from runtime.oci import ImageConfig, ImageNotFound
from runtime.store.commit import (
    CommitError,
    HistoryEntry,
    IdShift,
    LayerInfo,
    commit_layer,
    create_image,
)
from runtime.store.images import ImageHold, ImageStore

Emit = Callable[[str], Awaitable[None]]
# BuildKit's automatic platform args: usable in FROM, and in a stage once declared
# (`ARG TARGETARCH`). This builder makes linux/amd64 images on linux/amd64.
AUTO_ARGS = {"TARGETPLATFORM": "linux/amd64", "TARGETOS": "linux", "TARGETARCH": "amd64",
             "TARGETVARIANT": "", "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux",
             "BUILDARCH": "amd64", "BUILDVARIANT": ""}
RUNTIME_MOUNT_POINTS = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf",
                        "/etc/hostname", "/etc")


@dataclass(frozen=True)
class BuildOptions:
    dockerfile: str = "Dockerfile"
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    target: str = ""
    no_cache: bool = False
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    network: str = "none"
    quiet: bool = False


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    tags: tuple[str, ...]
    base_images: tuple[tuple[str, str], ...]
    steps: int
    cached: int


@dataclass
class _StageState:
    image_id: str | None
    config: ImageConfig
    scope_args: dict[str, str]
    cmd_set: bool = False
    author: str = ""


class BuildFailed(Exception):
    """A step failed; the message names the file, line and instruction."""


class Builder:
    def __init__(self, store: ImageStore, runner: StepRunner, cache: BuildCache,
                 work_dir: Path) -> None:
        self.store, self.runner, self.cache, self.work_dir = store, runner, cache, work_dir

    async def build(self, df: Dockerfile, context: Path, opts: BuildOptions,
                    emit: Emit) -> BuildResult:
        # A running build is an image user: the images it stands on (bases, steps,
        # cache hits) and the layers it committed survive a prune or rmi meanwhile.
        name = "running build" + (f" of {opts.tags[0]}" if opts.tags else "")
        with self.store.hold(name) as hold:
            b = _Build(self, df, context, opts, emit, hold)
            return await b.run()


class _Build:
    def __init__(self, owner: Builder, df: Dockerfile, context: Path, opts: BuildOptions,
                 emit: Emit, hold: ImageHold) -> None:
        self.o, self.df, self.context, self.opts, self.emit = owner, df, context, opts, emit
        self.store = owner.store
        self.hold = hold
        self.meta: dict[str, str] = dict(AUTO_ARGS)
        self.used_args: set[str] = set()
        self.stage_images: dict[int, str | None] = {}
        self.bases: list[tuple[str, str]] = []
        self.step = 0
        self.cached = 0
        self.total = 0

    async def say(self, text: str) -> None:
        await self.emit(text)

    async def run(self) -> BuildResult:
        last = len(self.df.stages) - 1
        if self.opts.target:
            idx = self.df.stage_index(self.opts.target)
            if idx is None:
                raise BuildFailed(f"failed to reach build target {self.opts.target} in "
                                  f"Dockerfile: no stage named {self.opts.target}")
            last = idx
        for ins in self.df.meta_args:
            for name, default in self._arg_pairs(ins, {}):
                self.used_args.add(name)
                self.meta[name] = self.opts.build_args.get(
                    name, default if default is not None else AUTO_ARGS.get(name, ""))
        # Like BuildKit, only the stages the target needs are built.
        stages = [self.df.stages[i] for i in sorted(self._needed(last))]
        extra = 1 if self.opts.labels else 0
        self.total = sum(1 + len(s.instructions) for s in stages) + extra
        state: _StageState | None = None
        for stage in stages:
            state = await self._stage(stage, last=stage is stages[-1])
        assert state is not None
        image_id = state.image_id or await self._commit(state, None, "", empty=True,
                                                         parent_key="scratch", key=None)
        unused = sorted(set(self.opts.build_args) - self.used_args)
        if unused:
            await self.say(f"[Warning] One or more build-args {unused} were not consumed\n")
        await asyncio.to_thread(self._tag, image_id)
        await self.say(f"Successfully built {image_id.removeprefix('sha256:')[:12]}\n")
        for t in self.opts.tags:
            await self.say(f"Successfully tagged {t}\n")
        return BuildResult(image_id, self.opts.tags, tuple(self.bases), self.step, self.cached)

    def _needed(self, idx: int) -> set[int]:
        """Stage `idx` and the earlier stages it reaches by FROM or COPY --from."""
        seen: set[int] = set()
        todo = [idx]
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            stage = self.df.stages[i]
            refs = [stage.base] + [ins.flag("from") or "" for ins in stage.instructions
                                   if ins.keyword is Keyword.COPY]
            for ref in refs:
                try:
                    name = expand(ref, self.meta, self.df.escape)
                except SubstitutionError:
                    continue
                j = self.df.stage_index(name) if name else None
                if j is not None and j < i:
                    todo.append(j)
        return seen

    def _lookup_and_hold(self, ref: str) -> str:
        with self.store.lock:  # no prune between finding the image and holding it
            iid = self.store.lookup(ref)
            self.hold.add(iid)
        return iid

    def _tag(self, image_id: str) -> None:
        for t in self.opts.tags:
            self.store.tag(image_id, t)

    def _arg_pairs(self, ins: Instruction, scope: dict[str, str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        try:
            for w in words(ins.args, scope, self.df.escape):
                name, eq, value = w.partition("=")
                out.append((name, value if eq else None))
        except SubstitutionError as e:
            raise ins.error(str(e)) from None
        return out

    # --- stages ---

    async def _stage(self, stage: Stage, last: bool) -> _StageState:
        self.step += 1
        head = f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else "")
        await self.say(f"Step {self.step}/{self.total} : {head}\n")
        try:
            base = expand(stage.base, self.meta, self.df.escape)
            platform = expand(stage.platform, self.meta, self.df.escape)
        except SubstitutionError as e:
            raise DockerfileError(self.df.file, stage.line, "FROM", str(e)) from None
        if platform not in ("", "linux/amd64", "amd64"):
            await self.say(f" ---> note: --platform={platform} ignored: this builder makes "
                           f"linux/amd64 images\n")
        state = await asyncio.to_thread(self._base_state, stage, base)
        await self.say(f" ---> {_short(state.image_id) if state.image_id else 'scratch'}\n")
        if state.config.onbuild:
            triggers = state.config.onbuild
            await self.say(f"# Executing {len(triggers)} build trigger"
                           f"{'s' if len(triggers) > 1 else ''}\n")
            state.config = dataclasses.replace(state.config, onbuild=())
            for text in triggers:
                ins = parse_trigger(text, self.df.file, stage.line)
                await self._instruction(stage, state, ins, counted=False)
        for ins in stage.instructions:
            await self._instruction(stage, state, ins)
        if last and self.opts.labels:
            text = "LABEL " + " ".join(f'"{k}"="{v}"' for k, v in sorted(self.opts.labels.items()))
            ins = Instruction(Keyword.LABEL, text[6:], 0, text, file=self.df.file)
            await self._instruction(stage, state, ins)
        self.stage_images[stage.index] = state.image_id
        return state

    def _base_state(self, stage: Stage, base: str) -> _StageState:
        if base == "scratch":
            return _StageState(None, ImageConfig(), {})
        idx = self.df.stage_index(base)
        if idx is not None and idx < stage.index and self.df.stages[idx].name == base.lower():
            iid = self.stage_images[idx]
            cfg = self.store.image_config(iid) if iid else ImageConfig()
            return _StageState(iid, cfg, {})
        try:
            iid = self._lookup_and_hold(base)
        except (ImageNotFound, LookupError):
            raise DockerfileError(self.df.file, stage.line, "FROM",
                                  f"image {base!r} is not in the image store; there is no "
                                  f"network to pull from here: `berth pull` or `berth load` "
                                  f"it first") from None
        self.bases.append((base, self.store.get(iid).manifest_digest))
        return _StageState(iid, self.store.image_config(iid), {})

    # --- one instruction ---

    async def _instruction(self, stage: Stage, st: _StageState, ins: Instruction,
                           counted: bool = True) -> None:
        if counted:
            self.step += 1
            await self.say(f"Step {self.step}/{self.total} : {ins.original}\n")
        try:
            await self._dispatch(stage, st, ins)
        except (CopyError, SubstitutionError, CommitError, ValueError, OSError) as e:
            if isinstance(e, DockerfileError):
                raise
            raise ins.error(str(e)) from None
        except LookupError as e:
            # The store lost an image this build stands on (an `image prune` meanwhile
            # removes a step's image before the next one has it as a parent).
            raise ins.error(f"{e}: an image this build made was removed meanwhile "
                            f"(image prune?); build again") from None
        except ContainerError as e:
            raise ins.error(str(e)) from None

    def _scope(self, st: _StageState) -> dict[str, str]:
        return {**st.scope_args, **cfgmod.env_map(st.config.env)}

    async def _dispatch(self, stage: Stage, st: _StageState, ins: Instruction) -> None:
        k = ins.keyword
        parent = st.image_id or "scratch"
        if k is Keyword.ARG:
            for name, default in self._arg_pairs(ins, self._scope(st)):
                self.used_args.add(name)
                if name in self.opts.build_args:
                    st.scope_args[name] = self.opts.build_args[name]
                elif default is not None:
                    st.scope_args[name] = default
                elif name in self.meta:
                    st.scope_args[name] = self.meta[name]
            return  # Docker's ARG changes no image: only what later steps see
        if k is Keyword.RUN:
            await self._run(st, ins, parent)
            return
        if k in (Keyword.COPY, Keyword.ADD):
            await self._copy(stage, st, ins, parent)
            return
        scope = self._scope(st)
        new = cfgmod.apply(st.config, ins, scope, self.df.escape, st.cmd_set)
        text = f"{k.value} {expand(ins.args, scope, self.df.escape)}" if k is not \
            Keyword.ONBUILD else ins.original
        key = cache_key(parent, text)
        if await self._hit(st, key):
            if k is Keyword.CMD:
                st.cmd_set = True
            return
        if k is Keyword.CMD:
            st.cmd_set = True
        if k is Keyword.MAINTAINER:
            st.author = ins.args
        layer = None
        if k is Keyword.WORKDIR and new.working_dir != "/":
            layer = await asyncio.to_thread(self._workdir_layer, st, new.working_dir)
        st.config = new
        await self._commit(st, layer, text, empty=layer is None, parent_key=parent, key=key)

    async def _hit(self, st: _StageState, key: str) -> bool:
        if self.opts.no_cache:
            return False
        iid = self.o.cache.get(key)
        if iid is None:
            return False
        try:
            cfg = await asyncio.to_thread(self._cached_config, iid, key)
        except (ImageNotFound, LookupError, OSError, ValueError):
            return False
        st.image_id, st.config = iid, cfg
        self.cached += 1
        await self.say(f" ---> Using cache\n ---> {_short(iid)}\n")
        return True

    def _cached_config(self, iid: str, key: str) -> ImageConfig:
        with self.store.lock:
            try:
                self.store.lookup(iid)  # still there?
            except ImageNotFound:
                self.o.cache.forget(key)  # removed by rmi or prune: a miss from now on
                raise
            self.hold.add(iid)
        return self.store.image_config(iid)

    async def _commit(self, st: _StageState, layer: LayerInfo | None, created_by: str, *,
                      empty: bool, parent_key: str, key: str | None) -> str:
        def make() -> str:
            # Under the store's lock: the new image is held before a prune can see it.
            with self.store.lock:
                rec = create_image(self.store, base=st.image_id,
                                   layers=[layer] if layer else [], config=st.config,
                                   history=[HistoryEntry(created_by, empty_layer=empty)],
                                   author=st.author)
                self.hold.add(rec.id)
            return rec.id
        iid = await asyncio.to_thread(make)
        if key is not None:
            with self.store.lock:
                self.o.cache.put(key, iid)
        st.image_id = iid
        await self.say(f" ---> {_short(iid)}\n")
        return iid

    # --- RUN ---

    async def _run(self, st: _StageState, ins: Instruction, parent: str) -> None:
        shell = st.config.shell or cfgmod.DEFAULT_SHELL
        if ins.heredocs and ins.json_args is None:
            marker = ins.args.strip()
            if len(ins.heredocs) == 1 and marker.lstrip("<-").strip("'\"") == \
                    ins.heredocs[0].name:
                argv: tuple[str, ...] = (*shell, ins.heredocs[0].content)
            else:  # `cmd <<EOF`: the shell itself feeds the heredoc to cmd
                script = ins.args + "\n" + "".join(f"{h.content}{h.name}\n" for h in ins.heredocs)
                argv = (*shell, script)
        else:
            argv = cfgmod.command(ins, shell)
        env_keys = cfgmod.env_map(st.config.env)
        args_env = tuple(f"{k}={v}" for k, v in sorted(st.scope_args.items())
                         if k not in env_keys)
        network = ins.flag("network") or self.opts.network
        network = "none" if network == "default" else network
        key = cache_key(parent, f"RUN {list(argv)}", "", [*args_env, f"network={network}"])
        if await self._hit(st, key):
            return
        if st.image_id is None:
            raise ins.error("cannot RUN in an empty (scratch) image: there is no shell")
        req = RunRequest(st.image_id, argv, (*st.config.env, *args_env), st.config.user,
                         st.config.working_dir, network,
                         MappingProxyType({BUILD_LABEL: f"{self.df.file}:{ins.line}"}))
        async with self.o.runner.run(req, self.say) as outcome:
            if outcome.error:
                raise ins.error(outcome.error)
            if outcome.exit_code != 0:
                shown = " ".join(argv) if ins.json_args is None else str(list(argv))
                raise ins.error(f"The command '{shown}' returned a non-zero code: "
                                f"{outcome.exit_code}")
            layer = await asyncio.to_thread(self._commit_run, st, outcome.upper,
                                            outcome.ids)
        prefix = f"|{len(args_env)} {' '.join(args_env)} " if args_env else ""
        await self._commit(st, layer, f"RUN {prefix}{' '.join(argv)}", empty=False,
                           parent_key=parent, key=key)

    def _commit_run(self, st: _StageState, upper: Path, ids: IdShift | None) -> LayerInfo:
        # The engine makes mount points (/proc, /dev, /etc/hosts ...) in the container's
        # upper dir when the image lacks them; like Docker's init layer, they are not
        # part of the image.
        view = self._view(st.image_id)
        for rel in RUNTIME_MOUNT_POINTS:
            path = upper / rel.lstrip("/")
            if view.stat(rel) is not None or path.is_symlink():
                continue
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()  # only if empty: RUN may have put files there
                elif path.is_file() and path.stat().st_size == 0:
                    path.unlink()
        return commit_layer(self.store, upper, ids, hold=self.hold)

    # --- COPY / ADD / WORKDIR ---

    def _view(self, image_id: str | None) -> LayerView:
        return LayerView(self.store.resolve(image_id).layer_dirs if image_id else ())

    async def _copy(self, stage: Stage, st: _StageState, ins: Instruction, parent: str) -> None:
        scope = self._scope(st)
        esc = self.df.escape
        args = ([expand(a, scope, esc) for a in ins.json_args] if ins.json_args is not None
                else words(ins.args, scope, esc))
        *srcs, dest = args
        heredoc_names = {h.name for h in ins.heredocs}
        inline = [h for h in ins.heredocs if f"<<{h.name}" in srcs or f"<<-{h.name}" in srcs]
        srcs = [s for s in srcs if s.lstrip("<-").strip("'\"") not in heredoc_names]
        if not dest.startswith("/"):
            dest = posixpath.join(st.config.working_dir or "/", dest) + (
                "/" if dest.endswith("/") else "")
        what = ins.keyword.value
        from_ref = ins.flag("from")
        if from_ref is not None and ins.keyword is Keyword.ADD:
            raise ins.error("ADD does not take --from; use COPY --from")
        sources = await asyncio.to_thread(self._sources, stage, ins, srcs, from_ref, what,
                                          scope)
        sources += [Source(h.name, Path("/dev/null"),
                           (expand(h.content, scope, esc) if h.expand else h.content).encode())
                    for h in inline]
        content = await asyncio.to_thread(
            hash_tree, [(s.name, s.path) for s in sources if s.inline is None])
        content += "".join(s.inline.decode() for s in sources if s.inline is not None)
        text = f"{what} " + " ".join(f"--{k}={v}" for k, v in ins.flags) + \
            f" {' '.join(args)}"
        key = cache_key(parent, text, content)
        if await self._hit(st, key):
            return
        layer = await asyncio.to_thread(self._stage_and_commit, st, ins, sources, dest)
        await self._commit(st, layer, text, empty=False, parent_key=parent, key=key)

    def _sources(self, stage: Stage, ins: Instruction, srcs: list[str], from_ref: str | None,
                 what: str, scope: dict[str, str]) -> list[Source]:
        if from_ref is None:
            return context_sources(self.context, srcs, what)
        ref = expand(from_ref, {**self.meta, **scope}, self.df.escape)
        idx = self.df.stage_index(ref)
        if idx is not None:
            if idx >= stage.index:
                raise ins.error(f"--from={ref}: a stage can only copy from an earlier stage")
            return view_sources(self._view(self.stage_images.get(idx)), srcs, what,
                                f"stage {ref}")
        try:
            iid = self._lookup_and_hold(ref)
        except (ImageNotFound, LookupError):
            raise ins.error(f"invalid from flag value {ref}: no stage or image of that "
                            f"name") from None
        return view_sources(self._view(iid), srcs, what, ref)

    def _stage_and_commit(self, st: _StageState, ins: Instruction, sources: list[Source],
                          dest: str) -> LayerInfo:
        view = self._view(st.image_id)
        owner = parse_chown(ins.flag("chown"), view)
        staging = Path(tempfile.mkdtemp(prefix="copy-", dir=self.o.work_dir))
        try:
            Stager(staging, view, owner, parse_chmod(ins.flag("chmod"))).copy(
                sources, dest, extract_tars=ins.keyword is Keyword.ADD)
            return commit_layer(self.store, staging, hold=self.hold)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _workdir_layer(self, st: _StageState, workdir: str) -> LayerInfo | None:
        view = self._view(st.image_id)
        if view.stat(workdir) is not None:
            return None
        staging = Path(tempfile.mkdtemp(prefix="workdir-", dir=self.o.work_dir))
        try:
            Stager(staging, view, Owner(), None).ensure_dir(workdir, owned=False)
            return commit_layer(self.store, staging, hold=self.hold)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _short(image_id: str | None) -> str:
    return (image_id or "").removeprefix("sha256:")[:12]
