"""The one expert resolver: ``NAME=SOURCE`` -> files on disk, a kind, and a pinned revision.

SOURCE is a local directory or a Hub repo id with an optional ``@revision``; a Hub revision is
resolved to its commit sha first and only that commit is downloaded, so every output that records the
sha can be reproduced exactly. Only the files the merge reads are fetched (a LoRA expert's adapter,
not the optimizer states LLaMA-Factory may have pushed beside it).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from merge_proxy.errors import MergeProxyError
from merge_proxy.expert_metadata import EXPERT_METADATA_FILE, ExpertMetadata, read_expert_metadata
from merge_proxy.hub import (
    HubError, HubOptions, fetch_snapshot, is_commit_sha, looks_like_repo_id, repo_files, split_revision,
)
from merge_proxy.jsonfiles import read_adapter_config
from merge_proxy.mixture import check_name

logger = logging.getLogger(__name__)

Kind = Literal["lora", "full"]

_LORA_FILES = ("adapter_config.json", "adapter_model.safetensors", EXPERT_METADATA_FILE)
_FULL_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json", EXPERT_METADATA_FILE)
_PICKLE_FILES = ("adapter_model.bin",)
#: A base model also needs what makes the export loadable (tokenizer, processor, chat template) and
#: its card, whose license a merge inherits.
_BASE_EXTRA = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py", "README.md")
#: JSON files that are training logs, not part of a model (LLaMA-Factory and the Trainer write them).
_TRAINING_LOGS = ("trainer_state.json", "all_results.json", "train_results.json", "eval_results.json")


class ExpertError(MergeProxyError):
    """An expert (or the base) cannot be used as given; the message names it and the fix."""


@dataclass(frozen=True)
class ExpertSpec:
    """An expert as the user wrote it: optional name, source, optional revision."""

    source: str
    name: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> ExpertSpec:
        """``NAME=SOURCE[@REV]`` or ``SOURCE[@REV]`` (named later from its metadata or position)."""
        text = text.strip()
        if not text:
            raise ExpertError("empty expert; write NAME=SOURCE, SOURCE a directory or a Hub repo id[@revision]")
        name: str | None = None
        if "=" in text and not Path(text).expanduser().exists():  # a directory named lr=1e-4 is a source
            name, text = (part.strip() for part in text.split("=", 1))
            check_name(name)
        source, revision = split_revision(text) if not Path(text).exists() else (text, None)
        return cls(source=source, name=name, revision=revision)

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.name + '=' if self.name else ''}{self.source}{at}"


#: The files that make a local model what it is, for :attr:`ResolvedModel.fingerprint`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_FILES = ("config.json", "adapter_config.json")


def local_fingerprint(path: str | Path) -> str:
    """``local:`` and a digest of a model folder's weight and config files' names, sizes and times."""
    import hashlib

    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(path).expanduser().iterdir()
                   if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in _CONFIG_FILES))
    return f"local:{hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class ResolvedModel:
    """A base model or expert on local disk, with where it came from."""

    name: str
    source: str
    path: Path
    kind: Kind
    repo_id: str | None = None
    revision: str | None = None
    """The commit sha for a Hub source; None for a local directory."""
    adapter_config: dict | None = None
    metadata: ExpertMetadata | None = field(default=None, compare=False)
    """expert.json, when the expert was trained or published by merge-proxy."""

    @property
    def pinned_source(self) -> str:
        """``repo[/subfolder]@sha`` for Hub sources, the absolute path for local ones: what outputs record."""
        if not self.repo_id:
            return str(self.path)
        return f"{self.source}@{self.revision}"

    @property
    def fingerprint(self) -> str:
        """What makes this the model that was scored: a Hub source's ``repo@sha``; for a local folder
        ``local:`` and a digest of its weight and config files' names, sizes and modification times, so an
        expert re-trained into the same ``output_dir`` is another model, while a moved folder, or one
        whose expert.json or card was rewritten (``merge-proxy publish``), is the same (hashing GBs of
        weights would cost more than it saves)."""
        return self.pinned_source if self.repo_id else local_fingerprint(self.path)

    def provenance(self, *, named: bool = True) -> dict[str, Any]:
        """What an output records of this model (a sweep's journal, an export's merge_proxy.json): the
        source as given, pinned (``repo@sha`` or the absolute path), its kind and what tells a local
        folder re-trained in place apart (:attr:`fingerprint`)."""
        return {**({"name": self.name} if named else {}), "source": self.source, "pinned": self.pinned_source,
                "revision": self.revision, "kind": self.kind, "fingerprint": self.fingerprint}

    @property
    def declared_bases(self) -> tuple[str, ...]:
        """Names of the base this expert says it was trained from: expert.json's Hub id and local
        path, and the adapter config's base_model_name_or_path (empty when it says nothing)."""
        names = list(self.metadata.base_model.names) if self.metadata else []
        if self.adapter_config and self.adapter_config.get("base_model_name_or_path"):
            names.append(str(self.adapter_config["base_model_name_or_path"]))
        return tuple(dict.fromkeys(names))


def _split_subfolder(source: str) -> tuple[str, str]:
    """``ORG/NAME/SUB/DIR`` -> (``ORG/NAME``, ``SUB/DIR``); the subfolder is empty for a bare repo id."""
    parts = source.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _is_hub_source(source: str) -> bool:
    repo_id, subfolder = _split_subfolder(source)
    return source.count("/") >= 1 and looks_like_repo_id(repo_id) and ".." not in subfolder.split("/")


def _hub_files(
    source: str, repo_id: str, revision: str | None, hub: HubOptions, label: str = ""
) -> tuple[str, list[str]]:
    """``repo_files`` of a source that is no local directory; a local path mistyped or not built yet
    reads as a Hub id (``checkpoints/base_models/X`` as repo ``checkpoints/base_models``), so a
    failure names both readings."""
    try:
        return repo_files(repo_id, revision, hub)
    except HubError as err:
        raise type(err)(
            f"{label}no directory {str(Path(source).expanduser())!r} in {Path.cwd()}, and as a Hub source: {err}"
        ) from None


def _kind_from_files(files: Sequence[str], label: str, folders: Sequence[str] = ()) -> Kind:
    names = {Path(f).name for f in files}
    if "adapter_config.json" in names:
        return "lora"
    if "config.json" in names:
        return "full"
    hint = f" (its folders: {', '.join(sorted(folders)[:5])}: name one as ORG/NAME/FOLDER)" if folders else ""
    raise ExpertError(
        f"{label} holds neither a PEFT adapter (adapter_config.json) nor a transformers checkpoint "
        f"(config.json){hint}; point it at the directory LLaMA-Factory wrote (output_dir)"
    )


def _check_weights_present(files: Sequence[str], kind: Kind, label: str, allow_pickle: bool) -> None:
    names = [Path(f).name for f in files]
    has_safetensors = any(n.endswith(".safetensors") for n in names) if kind == "full" else (
        "adapter_model.safetensors" in names
    )
    if has_safetensors:
        return
    pickles = [n for n in names if n.endswith(".bin")]
    if pickles and kind == "full":
        raise ExpertError(
            f"{label} has only pickle weights ({', '.join(sorted(pickles))}); full checkpoints are streamed "
            "from safetensors (--allow-pickle covers LoRA adapters only): re-save it with transformers' "
            "save_pretrained, which writes safetensors"
        )
    if pickles and not allow_pickle:
        raise ExpertError(
            f"{label} has only pickle weights ({', '.join(sorted(pickles))}); loading them can run code "
            "from the file: convert them to safetensors, or pass --allow-pickle if you trust the source"
        )
    if not pickles:
        raise ExpertError(f"{label} has no weights (no .safetensors file); is it a complete {kind} checkpoint?")


def _patterns(kind: Kind, allow_pickle: bool, for_base: bool) -> list[str]:
    patterns = list(_LORA_FILES if kind == "lora" else _FULL_FILES)
    if allow_pickle:
        patterns += _PICKLE_FILES
    if for_base:
        patterns += _BASE_EXTRA
    return patterns


@dataclass(frozen=True)
class _Located:
    """An expert or base found and checked (kind, weights, revision), before anything is downloaded."""

    spec: ExpertSpec
    label: str
    kind: Kind
    for_base: bool
    files: tuple[str, ...]
    """The files at the top of the model's folder (a Hub subfolder's, for a Hub source)."""
    local: Path | None = None
    repo_id: str | None = None
    subfolder: str = ""
    sha: str | None = None


def _locate(spec: ExpertSpec, *, allow_pickle: bool, for_base: bool, hub: HubOptions,
            label: str | None = None) -> _Located:
    """Find one model and check what it holds, reading only a directory listing or the Hub's file list."""
    label = label or f"{'base model' if for_base else 'expert'} {spec.name or spec.source!r}"
    local = Path(spec.source).expanduser()
    if local.is_dir():
        if spec.revision:
            raise ExpertError(f"{label}: a revision (@{spec.revision}) only applies to Hub repos, not local directories")
        files = [p.name for p in local.iterdir() if p.is_file()]
        kind = _kind_from_files(files, label)
        _check_weights_present(files, kind, label, allow_pickle)
        return _Located(spec, label, kind, for_base, tuple(files), local=local.resolve())
    if not _is_hub_source(spec.source):
        raise ExpertError(
            f"{label}: {spec.source!r} is neither an existing directory nor a Hub repo id (ORG/NAME[@REV])"
        )
    # ORG/NAME or ORG/NAME/SUB/FOLDER: repositories holding one model per subfolder (the reference
    # mixture models) are addressed by the folder after the repo id.
    repo_id, subfolder = _split_subfolder(spec.source)
    sha, files = _hub_files(spec.source, repo_id, spec.revision, hub, f"{label}: ")
    if not is_commit_sha(sha):
        raise ExpertError(f"{label}: the Hub answered commit {sha!r}, not a 40-hex sha")
    if subfolder:
        files = [f[len(subfolder) + 1:] for f in files if f.startswith(subfolder + "/")]
        if not files:
            raise ExpertError(f"{label}: {repo_id}@{sha[:10]} has no folder {subfolder!r}")
    folders = {f.split("/", 1)[0] for f in files if "/" in f}
    files = [f for f in files if "/" not in f]  # the model's own files, not its checkpoint-N/ folders
    kind = _kind_from_files(files, f"{label} ({spec.source}@{sha[:10]})", sorted(folders))
    _check_weights_present(files, kind, label, allow_pickle)
    return _Located(spec, label, kind, for_base, tuple(files), repo_id=repo_id, subfolder=subfolder, sha=sha)


def _needed_files(located: _Located, allow_pickle: bool, weights: bool = True) -> list[str]:
    """The exact files the merge reads, at the model folder's top level only.

    Patterns alone would also match intermediate checkpoints in subfolders (``checkpoint-500/``,
    several GB each for a full fine-tune), since ``*`` matches ``/`` in the Hub client's filter.
    ``weights=False`` leaves out a base's weights when only its config is read (``--format lora``).
    """
    patterns = _patterns(located.kind, allow_pickle, located.for_base)
    top = [
        f for f in located.files
        if any(fnmatch.fnmatchcase(f, p) for p in patterns) and f not in _TRAINING_LOGS
        and (weights or not f.endswith(".safetensors"))
    ]
    prefix = f"{located.subfolder}/" if located.subfolder else ""
    return [glob.escape(prefix + f) for f in top]


def _fetch(
    located: _Located, *, position: int, allow_pickle: bool, hub: HubOptions, weights: bool = True
) -> ResolvedModel:
    """Download what a located Hub model needs (nothing for a local one) and read its metadata."""
    if located.local is not None:
        path = located.local
    else:
        assert located.repo_id is not None and located.sha is not None
        path = fetch_snapshot(located.repo_id, located.sha, _needed_files(located, allow_pickle, weights), hub)
        if located.subfolder:
            path = path / located.subfolder
    spec = located.spec
    adapter_config = read_adapter_config(path / "adapter_config.json", ExpertError) if located.kind == "lora" else None
    metadata = read_expert_metadata(path / EXPERT_METADATA_FILE, ExpertError, f"{located.label}: re-publish the "
                                     "expert (merge-proxy publish), or repair or delete the file",
                                     foreign_ok=True)
    name = spec.name or (metadata.domain if metadata else None) or ("base" if located.for_base else f"expert{position}")
    resolved = ResolvedModel(
        name=check_name(str(name)), source=spec.source, path=path, kind=located.kind,
        repo_id=located.repo_id, revision=located.sha, adapter_config=adapter_config, metadata=metadata,
    )
    logger.info("%s: %s %s (%s)", located.label, located.kind, resolved.pinned_source, path)
    return resolved


def resolve(
    spec: ExpertSpec,
    *,
    position: int = 0,
    allow_pickle: bool = False,
    for_base: bool = False,
    hub: HubOptions | None = None,
    weights: bool = True,
) -> ResolvedModel:
    """Locate (and fetch, for a Hub source) one expert or the base model.

    The name is the spec's, else the domain in expert.json, else ``expert<position>``.
    ``weights=False`` fetches a Hub base without its weights (its config, to read the architecture).
    """
    hub = hub or HubOptions()
    located = _locate(spec, allow_pickle=allow_pickle, for_base=for_base, hub=hub)
    return _fetch(located, position=position, allow_pickle=allow_pickle, hub=hub, weights=weights)


def pin_source(source: str, hub: HubOptions | None = None) -> str:
    """``ORG/NAME[/SUB][@REV]`` -> ``ORG/NAME[/SUB]@SHA`` with one request, nothing downloaded; a
    local directory is returned as is.

    Jobs that start at different times (SLURM shards after a queue wait) then all merge the same
    commits, even if a branch moves meanwhile.
    """
    spec = ExpertSpec.parse(source)
    if Path(spec.source).expanduser().is_dir() or not _is_hub_source(spec.source):
        return source
    repo_id, _ = _split_subfolder(spec.source)
    sha, _ = _hub_files(spec.source, repo_id, spec.revision, hub or HubOptions())
    return f"{spec.source}@{sha}"


def check_source(source: str, label: str, *, for_base: bool = False, allow_pickle: bool = False,
                 hub: HubOptions | None = None) -> tuple[str, Kind]:
    """Locate one model and check what it holds (kind, weights) from a directory listing or the Hub's
    file list, nothing downloaded; return its source pinned (``repo[/SUB]@sha``; a local one as given)
    and its kind.

    A sweep checks every model it will load this way before its first score: a typo in the last of
    24 truth models fails in seconds, not hours into a SLURM array. ``label`` names the model's role
    in errors (``truth model of a=0.5,b=0.5``).
    """
    located = _locate(ExpertSpec.parse(source), allow_pickle=allow_pickle, for_base=for_base,
                      hub=hub or HubOptions(), label=label)
    return (f"{located.spec.source}@{located.sha}" if located.sha else source), located.kind


def resolve_merge_inputs(
    base: ExpertSpec,
    experts: Sequence[ExpertSpec | str],
    *,
    allow_pickle: bool = False,
    lora_only: bool = False,
    hub: HubOptions | None = None,
) -> tuple[ResolvedModel, list[ResolvedModel]]:
    """The base and every expert, all located and checked before the first byte is downloaded.

    A typo in the last expert, or a full expert given to a LoRA-only output, fails in seconds
    instead of after gigabytes of the base were fetched.
    """
    hub = hub or HubOptions()
    parsed = parse_expert_specs(experts)
    base_at = _locate(base, allow_pickle=allow_pickle, for_base=True, hub=hub)
    if base_at.kind != "full":
        raise ExpertError(f"{base_at.label} is a LoRA adapter; pass the model it adapts as the base")
    found = [_locate(s, allow_pickle=allow_pickle, for_base=False, hub=hub) for s in parsed]
    full = [f.spec.name or f.spec.source for f in found if f.kind == "full"]
    if lora_only and full:
        raise ExpertError(
            f"--format lora needs LoRA experts only; {', '.join(full)} {'is a full checkpoint' if len(full) == 1 else 'are full checkpoints'}: use --format full"
        )
    # A LoRA-format output reads the base's config only: its weights (GBs) are not fetched.
    resolved_base = _fetch(base_at, position=0, allow_pickle=allow_pickle, hub=hub, weights=not lora_only)
    return resolved_base, _fetch_experts(found, allow_pickle, hub)


def parse_expert_specs(specs: Sequence[ExpertSpec | str]) -> list[ExpertSpec]:
    """Parsed specs; names given twice are refused here, before anything is fetched (names derived
    from the experts' own files are checked again after the fetch)."""
    parsed = [s if isinstance(s, ExpertSpec) else ExpertSpec.parse(s) for s in specs]
    if not parsed:
        raise ExpertError("no experts given; pass at least one NAME=SOURCE")
    named = [s.name for s in parsed if s.name]
    twice = next((n for n in named if named.count(n) > 1), None)
    if twice:
        raise ExpertError(f"two experts are named {twice!r}; give each expert a different NAME (NAME=SOURCE)")
    return parsed


def _fetch_experts(found: Sequence[_Located], allow_pickle: bool, hub: HubOptions) -> list[ResolvedModel]:
    """Fetch located experts, naming unnamed ones by position; duplicate names are refused."""
    experts = [_fetch(f, position=i, allow_pickle=allow_pickle, hub=hub) for i, f in enumerate(found)]
    seen: dict[str, str] = {}
    for e in experts:
        if e.name in seen:
            raise ExpertError(
                f"two experts are named {e.name!r} ({seen[e.name]} and {e.source}); give each a different "
                "name with NAME=SOURCE"
            )
        seen[e.name] = e.source
    return experts


def resolve_experts(
    specs: Sequence[ExpertSpec | str],
    *,
    allow_pickle: bool = False,
    hub: HubOptions | None = None,
) -> list[ResolvedModel]:
    """Resolve every expert, naming unnamed ones; all are located and checked before any download,
    and duplicate names are refused before any merge work."""
    hub = hub or HubOptions()
    found = [_locate(s, allow_pickle=allow_pickle, for_base=False, hub=hub) for s in parse_expert_specs(specs)]
    return _fetch_experts(found, allow_pickle, hub)
