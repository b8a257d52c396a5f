"""expert.json: the provenance record merge-proxy publishes beside every expert.

An expert is only worth sharing with its provenance (base, data, sample counts, LoRA settings), and a
sweep needs some of it without downloading weights (its domain, its base). The training callback and
``merge-proxy publish`` write the record, the expert resolver and the card read it; all of them go
through :class:`ExpertMetadata`, so a field is named in one place. The JSON layout is the versioned
schema ``merge-proxy/expert`` 1: documents written by earlier releases read back unchanged, and keys
this release does not know survive a rewrite (``merge-proxy publish --domain`` relabels a document).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from merge_proxy.errors import ConfigError, MergeProxyError

logger = logging.getLogger(__name__)

EXPERT_METADATA_FILE = "expert.json"
SCHEMA = "merge-proxy/expert"
SCHEMA_VERSION = 1

Artifact = Literal["adapter", "full"]
#: A training setting as the LLaMA-Factory YAML gave it (``learning_rate: 1e-4`` is a string to YAML).
Setting = str | int | float | bool | None


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
    template: Setting = None
    cutoff_len: Setting = None
    learning_rate: Setting = None
    lr_scheduler_type: Setting = None
    warmup_ratio: Setting = None
    num_train_epochs: Setting = None
    max_steps: Setting = None
    training: TrainingSummary = TrainingSummary()
    seed: Setting = None
    versions: dict[str, str] = field(default_factory=dict)
    """Versions of llamafactory, transformers, peft, torch and merge-proxy that trained it."""
    schema_version: int = SCHEMA_VERSION
    license: str | None = None
    """The license the expert was published under when one was given (``expert: license:``), so a
    re-publication keeps it; written only when set (documents before it read the same)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Top-level keys this release does not know (a later release wrote them), kept on rewrite."""
    nested_extra: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    """Unknown keys inside ``base_model``, ``lora``, ``training`` (by that name) and the i-th dataset
    (``datasets.i``), kept on rewrite too."""

    def with_base(self, **changes: str | None) -> ExpertMetadata:
        """This record with some of its base's fields changed (``id=``, ``revision=``)."""
        return replace(self, base_model=replace(self.base_model, **changes))

    def to_json(self) -> dict[str, Any]:
        """The document as written: keys in the schema's order, then the unknown ones."""
        data: dict[str, Any] = {"schema": SCHEMA, "schema_version": self.schema_version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("schema_version", *_OWN) or (f.name in _LATER_FIELDS and value is None):
                continue
            data[f.name] = _plain(value)
            if f.name in _NESTED and value is not None:
                data[f.name].update(self.nested_extra.get(f.name, {}))
        for i, item in enumerate(data["datasets"]):
            item.update(self.nested_extra.get(f"datasets.{i}", {}))
        return {**data, **{k: v for k, v in self.extra.items() if k not in data}}

    def to_text(self) -> str:
        """expert.json's bytes, as published and as kept beside the training output."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(
        cls, data: Any, where: str | Path, error: type[MergeProxyError] = ConfigError,
        fix: str = "re-publish the expert, or repair the file", *, newer_ok: bool = False,
    ) -> ExpertMetadata:
        """Read a document, refusing one that is not an expert record with ``error`` naming ``where``,
        the field and ``fix``; fields missing from an older document read as unknown (None). A newer
        release's document is refused unless ``newer_ok``, which reads what this release knows of it."""
        def bad(what: str) -> MergeProxyError:
            return error(f"{where} is not a merge-proxy expert.json ({what}); {fix}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise bad(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise bad(f"schema_version {version!r}, expected a positive integer")
        if version > SCHEMA_VERSION and newer_ok:
            logger.warning("%s was written by a newer merge-proxy (schema_version %d); read as version %d",
                           where, version, SCHEMA_VERSION)
        elif version > SCHEMA_VERSION:
            raise error(f"{where} has schema_version {version}; this merge-proxy reads up to "
                        f"{SCHEMA_VERSION}: upgrade merge-proxy (pip install -U merge-proxy)")
        if not data.get("domain"):
            raise bad("no domain")
        if "artifact" not in data:
            raise bad("no artifact")
        nested_extra: dict[str, dict[str, Any]] = {}
        values: dict[str, Any] = {}
        for name, hint in get_type_hints(cls).items():
            if name in _OWN or name not in data:
                continue
            value = data[name]
            if name in _NESTED and value is None:  # as if absent: the field's default
                continue
            if name in _NESTED:
                values[name], nested_extra[name] = _read_part(_NESTED[name], value, name, bad)
            elif name == "datasets":
                parts = [_read_part(DatasetUse, d, f"datasets.{i}", bad) for i, d in enumerate(_list(value, bad))]
                values[name] = tuple(p for p, _ in parts)
                nested_extra.update({f"datasets.{i}": e for i, (_, e) in enumerate(parts) if e})
            else:
                values[name] = _checked(value, hint, name, bad)
        known = {f.name for f in fields(cls) if f.name not in _OWN} | {"schema"}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known},
                   nested_extra={k: v for k, v in nested_extra.items() if v})


#: Nested records, by the field that holds them.
_NESTED: dict[str, type] = {"base_model": BaseModelRef, "lora": LoraSettings, "training": TrainingSummary}
#: ExpertMetadata's own bookkeeping, not part of the document.
_OWN = ("extra", "nested_extra")
#: Fields added after schema version 1 was first written, left out while unset.
_LATER_FIELDS = ("license",)


def _plain(value: Any) -> Any:
    """A field as JSON: nested records as objects; the training summary with its samples_seen."""
    if isinstance(value, TrainingSummary):
        return {**asdict(value), "samples_seen": value.samples_seen}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return asdict(value) if value is not None and hasattr(value, "__dataclass_fields__") else value


def _list(value: Any, bad: Any) -> list[Any]:
    if not isinstance(value, list):
        raise bad(f"datasets is {_json_type(value)}, expected a list")
    return value


def _read_part(cls: type, value: Any, key: str, bad: Any) -> tuple[Any, dict[str, Any]]:
    """A nested record from its object, each field checked, and the keys it does not hold (derived
    ones, ``samples_seen``, are recomputed, not kept)."""
    if not isinstance(value, dict):
        raise bad(f"{key} is {_json_type(value)}, expected an object")
    hints = get_type_hints(cls)
    known = {k: _checked(v, hints[k], f"{key}.{k}", bad) for k, v in value.items() if k in hints}
    if cls is DatasetUse:
        known = {"name": "?", "rows": None, **known}
    unknown = {k: v for k, v in value.items() if k not in hints and k != "samples_seen"}
    return cls(**known), unknown


def _checked(value: Any, hint: Any, key: str, bad: Any) -> Any:
    if not _conforms(value, hint):
        raise bad(f"{key} is {_json_type(value)} {json.dumps(value)[:40]}, expected {_expected(hint)}")
    return value


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (JSON has no int/bool/float distinction Python
    keeps: a bool is no number here, an int is a float)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(v, args[1]) for v in value.values())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _expected(hint: Any) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(dict.fromkeys(_expected(a) for a in args))
    if origin is Literal:
        return " or ".join(map(str, args))
    if origin is list:
        return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "an object"
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def read_expert_metadata(
    path: str | Path, error: type[MergeProxyError] = ConfigError, fix: str = "re-publish the expert, or repair the file",
    *, foreign_ok: bool = False,
) -> ExpertMetadata | None:
    """The expert.json at ``path``, None when there is none.

    ``foreign_ok``: another tool's file of that name (a JSON object without our schema) reads as
    none, with a warning, instead of an error, and a newer release's document is read as far as this
    release knows it: a merge only uses the record to name and check the expert, while publishing
    would rewrite the file.
    """
    from merge_proxy.jsonfiles import read_json

    path = Path(path)
    if not path.is_file():
        return None
    data = read_json(path, fix, error)
    if foreign_ok and isinstance(data, dict) and data.get("schema") != SCHEMA:
        logger.warning("%s is not merge-proxy's (schema %r); ignored", path, data.get("schema"))
        return None
    return ExpertMetadata.from_json(data, path, error, fix, newer_ok=foreign_ok)


def write_expert_metadata(output_dir: str | Path, expert: ExpertMetadata) -> Path:
    """expert.json in ``output_dir``, written whole or not at all."""
    from merge_proxy.atomic import atomic_write_text

    path = Path(output_dir) / EXPERT_METADATA_FILE
    atomic_write_text(path, expert.to_text())
    return path
