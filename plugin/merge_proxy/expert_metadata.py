"""expert.json: the provenance record merge-proxy publishes beside every expert.

An expert is only worth sharing with its provenance (base, data, sample counts, LoRA settings), and a
sweep needs some of it without downloading weights (its domain, its base). The training callback and
``merge-proxy publish`` write the record, the expert resolver and the card read it; all of them go
through :class:`ExpertMetadata`, so a field is named in one place. The JSON layout is the versioned
schema ``merge-proxy/expert`` 1: documents written by earlier releases read back unchanged, and keys
this release does not know survive a rewrite (``merge-proxy publish --domain`` relabels a document).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from merge_proxy.errors import ConfigError, MergeProxyError

logger = logging.getLogger(__name__)

EXPERT_METADATA_FILE = "expert.json"
SCHEMA = "merge-proxy/expert"
SCHEMA_VERSION = 1

Artifact = Literal["adapter", "full"]


@dataclass(frozen=True)
class BaseModelRef:
    """The base an expert was trained from."""

    id: str | None = None
    """Its Hub id, as the card's base_model names it (None until one is known: a local base)."""
    path: str | None = None
    """model_name_or_path as LLaMA-Factory loaded it (a Hub id or a local directory)."""
    revision: str | None = None
    """The commit trained on (``merge-proxy train`` pins a Hub base first), else the revision as given."""

    @property
    def names(self) -> tuple[str, ...]:
        """The names a base given to the merge engine may match: the Hub id, then the local path."""
        return tuple(dict.fromkeys(str(n) for n in (self.id, self.path) if n))


@dataclass(frozen=True)
class DatasetUse:
    """One LLaMA-Factory dataset as it entered mixing (before the validation split)."""

    name: str
    rows: int | None
    """Rows LLaMA-Factory loads from it: dataset_info.json's num_samples (a sample of the file, with
    repetition when larger) else the file's rows, then capped by max_samples. None when the size cannot
    be read locally (a Hub dataset, streaming)."""
    hub_id: str | None = None
    file: str | None = None
    file_rows: int | None = None
    """Rows in the local file, whatever was drawn from it."""


@dataclass(frozen=True)
class LoraSettings:
    """The adapter's settings as PEFT saved them (adapter_config.json)."""

    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    use_rslora: bool = False
    use_dora: bool = False
    target_modules: list[str] | str | None = None
    """The resolved module paths (sorted), or PEFT's pattern string when it saved one."""

    @property
    def target_summary(self) -> str:
        """Targets as layer kinds with a count (``q_proj, v_proj (56 modules)``): full paths make an
        unreadable card."""
        targets = self.target_modules or []
        if isinstance(targets, str):
            return targets
        kinds = sorted({t.rsplit(".", 1)[-1] for t in targets})
        return f"{', '.join(kinds)} ({len(targets)} modules)"


@dataclass(frozen=True)
class TrainingSummary:
    """What the trainer reports at the end (from the callback, or trainer_state.json afterwards)."""

    global_steps: int | None = None
    epochs: float | None = None
    final_loss: float | None = None
    """The last logged step loss: None when no step was logged (logging_steps above the steps run)."""
    train_loss: float | None = None
    """The trainer's mean loss over the run (its ``train_loss``), known even when no step was logged."""
    train_runtime_s: float | None = None
    global_batch_size: int | None = None
    train_samples: int | None = None
    """Examples in the training split as the trainer got it (after num_samples, max_samples, mixing and
    val_size); only a callback running inside training knows it."""

    @property
    def samples_seen(self) -> int | None:
        """Training examples drawn (steps x global batch): differs from the rows when epochs != 1."""
        if self.global_steps is None or self.global_batch_size is None:
            return None
        return self.global_steps * self.global_batch_size


@dataclass(frozen=True)
class ExpertMetadata:
    """expert.json. ``training`` says what the run did, the flat fields what LLaMA-Factory was told."""

    domain: str
    artifact: Artifact
    base_model: BaseModelRef = BaseModelRef()
    datasets: tuple[DatasetUse, ...] = ()
    samples: int | None = None
    """Training examples (the trainer's count, else the datasets' rows less the validation split)."""
    mixing: dict[str, Any] = field(default_factory=dict)
    """LLaMA-Factory's mix_strategy, interleave_probs, max_samples and val_size."""
    finetuning_type: str | None = None
    lora: LoraSettings | None = None
    template: str | None = None
    cutoff_len: int | None = None
    learning_rate: float | None = None
    lr_scheduler_type: str | None = None
    warmup_ratio: float | None = None
    num_train_epochs: float | None = None
    max_steps: int | None = None
    training: TrainingSummary = TrainingSummary()
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    """Versions of llamafactory, transformers, peft, torch and merge-proxy that trained it."""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Top-level keys this release does not know (a later release wrote them), kept on rewrite."""

    def with_base(self, **changes: str | None) -> ExpertMetadata:
        """This record with some of its base's fields changed (``id=``, ``revision=``)."""
        return replace(self, base_model=replace(self.base_model, **changes))

    def to_json(self) -> dict[str, Any]:
        """The document as written: keys in the schema's order, then the unknown ones."""
        data: dict[str, Any] = {"schema": SCHEMA, "schema_version": self.schema_version}
        for f in fields(self):
            if f.name not in ("schema_version", "extra"):
                data[f.name] = _plain(getattr(self, f.name))
        return {**data, **{k: v for k, v in self.extra.items() if k not in data}}

    @classmethod
    def from_json(
        cls, data: Any, where: str | Path, error: type[MergeProxyError] = ConfigError,
        fix: str = "re-publish the expert, or repair the file",
    ) -> ExpertMetadata:
        """Read a document, refusing one that is not an expert record with ``error`` naming ``where``,
        the field and ``fix``; fields missing from an older document read as unknown (None)."""
        def bad(what: str) -> MergeProxyError:
            return error(f"{where} is not a merge-proxy expert.json ({what}); {fix}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise bad(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise error(f"{where} has schema_version {version!r}; this merge-proxy reads up to "
                        f"{SCHEMA_VERSION}: upgrade merge-proxy (pip install -U merge-proxy)")
        domain, artifact = data.get("domain"), data.get("artifact")
        if not isinstance(domain, str) or not domain:
            raise bad("no domain")
        if artifact not in ("adapter", "full"):
            raise bad(f"artifact {artifact!r}, expected adapter or full")
        known = {f.name for f in fields(cls)} | {"schema"}
        return cls(
            domain=domain, artifact=artifact,
            base_model=_part(BaseModelRef, data.get("base_model"), "base_model", bad) or BaseModelRef(),
            datasets=tuple(_part(DatasetUse, d, "datasets", bad, name="?", rows=None)
                           for d in _list(data.get("datasets"), "datasets", bad)),
            samples=data.get("samples"), mixing=dict(_mapping(data.get("mixing"), "mixing", bad)),
            finetuning_type=data.get("finetuning_type"), lora=_part(LoraSettings, data.get("lora"), "lora", bad),
            template=data.get("template"), cutoff_len=data.get("cutoff_len"), learning_rate=data.get("learning_rate"),
            lr_scheduler_type=data.get("lr_scheduler_type"), warmup_ratio=data.get("warmup_ratio"),
            num_train_epochs=data.get("num_train_epochs"), max_steps=data.get("max_steps"),
            training=_part(TrainingSummary, data.get("training"), "training", bad) or TrainingSummary(),
            seed=data.get("seed"), versions=dict(_mapping(data.get("versions"), "versions", bad)),
            schema_version=version, extra={k: v for k, v in data.items() if k not in known},
        )


def _plain(value: Any) -> Any:
    """A field as JSON: nested records as objects; the training summary with its samples_seen."""
    if isinstance(value, TrainingSummary):
        return {**asdict(value), "samples_seen": value.samples_seen}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return asdict(value) if value is not None and hasattr(value, "__dataclass_fields__") else value


def _mapping(value: Any, key: str, bad: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{key} is {type(value).__name__}, expected an object")
    return value


def _list(value: Any, key: str, bad: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(f"{key} is {type(value).__name__}, expected a list")
    return value


def _part(cls: type, value: Any, key: str, bad: Any, **defaults: Any) -> Any:
    """A nested record from its object, ignoring keys it does not hold (derived ones: samples_seen)."""
    if value is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{**defaults, **{k: v for k, v in _mapping(value, key, bad).items() if k in names}})


def read_expert_metadata(
    path: str | Path, error: type[MergeProxyError] = ConfigError, fix: str = "re-publish the expert, or repair the file",
    *, foreign_ok: bool = False,
) -> ExpertMetadata | None:
    """The expert.json at ``path``, None when there is none.

    ``foreign_ok``: another tool's file of that name (a JSON object without our schema) reads as
    none, with a warning, instead of an error: a merge only uses the record to name and check the
    expert, while publishing would replace the file.
    """
    from merge_proxy.jsonfiles import read_json

    path = Path(path)
    if not path.is_file():
        return None
    data = read_json(path, fix, error)
    if foreign_ok and isinstance(data, dict) and data.get("schema") != SCHEMA:
        logger.warning("%s is not merge-proxy's (schema %r); ignored", path, data.get("schema"))
        return None
    return ExpertMetadata.from_json(data, path, error, fix)


def write_expert_metadata(output_dir: str | Path, expert: ExpertMetadata) -> Path:
    """expert.json in ``output_dir``, written whole or not at all."""
    import json

    from merge_proxy.atomic import atomic_write_text

    path = Path(output_dir) / EXPERT_METADATA_FILE
    atomic_write_text(path, json.dumps(expert.to_json(), indent=2) + "\n")
    return path
