"""What an expert is: the ``expert:`` block a user writes, and its expert.json as derived from a
LLaMA-Factory run (its arguments, its output directory, what the trainer reported).

LLaMA-Factory keeps no per-dataset counts after mixing, so they are re-derived here as it loads
them; the record itself (:class:`~merge_proxy.expert_metadata.ExpertMetadata`) and its JSON live in
merge_proxy.expert_metadata. The card repeats the searchable part as metadata and tags.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge_proxy.errors import ConfigError
from merge_proxy.expert_metadata import (
    Artifact, BaseModelRef, DatasetUse, ExpertMetadata, LoraSettings, TrainingSummary,
)
from merge_proxy.flags import parse_flag
from merge_proxy.jsonfiles import read_adapter_config
from merge_proxy.hub import is_repo_id, looks_like_repo_id
from merge_proxy.mixture import check_name

logger = logging.getLogger(__name__)

EXPERT_TAG = "merge-proxy-expert"
DOMAIN_TAG_PREFIX = "merge-proxy-domain:"
#: The shape of the Hub's license ids (apache-2.0, cc-by-nc-sa-4.0, openrail++, llama3.1, other): the Hub
#: refuses a card with another, and only after training would be too late to say so.
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")
_SPEC_KEYS = ("repo_id", "domain", "private", "revision", "tags", "base_model", "push", "artifact", "license")


@dataclass(frozen=True)
class PublishSpec:
    """The ``expert:`` block of a LLaMA-Factory YAML (or the flags of ``merge-proxy publish``)."""

    domain: str
    repo_id: str | None = None
    private: bool = True
    revision: str | None = None
    tags: tuple[str, ...] = ()
    base_model: str | None = None
    push: bool = True
    artifact: Artifact | None = None
    license: str | None = None
    """The card's license (a Hub license id such as apache-2.0); by default the base model's."""

    @classmethod
    def from_block(cls, block: Any, where: str = "expert:") -> PublishSpec:
        """Validate the block with errors that name the key and the fix."""
        if not isinstance(block, dict):
            raise ConfigError(f"{where} must be a mapping of {', '.join(_SPEC_KEYS)}")
        unknown = sorted(set(block) - set(_SPEC_KEYS))
        if unknown:
            raise ConfigError(f"{where} unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_SPEC_KEYS)}")
        if not block.get("domain"):
            raise ConfigError(f"{where} needs domain: (the data domain this expert covers, e.g. ocr)")
        push = _flag(block, "push", True, where)
        repo_id = block.get("repo_id")
        if push and not repo_id:
            raise ConfigError(f"{where} needs repo_id: (ORG/NAME on the Hub), or push: false")
        if repo_id and not is_repo_id(str(repo_id)):
            raise ConfigError(f"{where} repo_id {repo_id!r} is not a Hub repo id like ORG/NAME")
        artifact = block.get("artifact")
        if artifact not in (None, "adapter", "full"):
            raise ConfigError(f"{where} artifact must be adapter or full, not {artifact!r}")
        tags = block.get("tags") or ()
        if isinstance(tags, str):
            tags = [tags]
        base_model = block.get("base_model")
        if base_model and not looks_like_repo_id(str(base_model)):
            raise ConfigError(f"{where} base_model must be a Hub id (ORG/NAME), not {base_model!r}")
        license_id = block.get("license")
        if license_id is not None and not (isinstance(license_id, str) and _LICENSE_ID.fullmatch(license_id)):
            raise ConfigError(f"{where} license must be a Hub license id such as apache-2.0, cc-by-4.0 or other "
                              f"(https://huggingface.co/docs/hub/repositories-licenses), not {license_id!r}")
        return cls(
            domain=check_name(str(block["domain"]), "domain"), repo_id=repo_id, private=_flag(block, "private", True, where),
            revision=block.get("revision"), tags=tuple(str(t) for t in tags), base_model=base_model, push=push,
            artifact=artifact, license=license_id,
        )


def _flag(block: dict[str, Any], key: str, default: bool, where: str) -> bool:
    """A yes/no key (a quoted ``push: "false"`` must not publish)."""
    value = parse_flag(block.get(key), default)
    if value is None:
        raise ConfigError(f"{where} {key} must be true or false, not {block[key]!r}")
    return value


def _count_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return len(data) if isinstance(data, list) else None
    return None


def dataset_uses(args: dict[str, Any]) -> list[DatasetUse]:
    """Per-dataset row counts, re-derived as LLaMA-Factory loads them (it keeps none after mixing)."""
    names = args.get("dataset") or []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    dataset_dir = Path(str(args.get("dataset_dir", "data")))
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    uses = []
    for name in names:
        entry = info.get(name, {})
        file_name = entry.get("file_name")
        file_rows = _count_rows(dataset_dir / file_name) if file_name else None
        rows = _rows_loaded(file_rows, entry.get("num_samples"), args)
        uses.append(DatasetUse(name=name, rows=rows, hub_id=entry.get("hf_hub_url"), file=file_name,
                               file_rows=file_rows))
    return uses


def _rows_loaded(file_rows: int | None, num_samples: Any, args: dict[str, Any]) -> int | None:
    """As llamafactory.data.loader._load_single_dataset: num_samples draws exactly that many rows (not
    when streaming), then max_samples truncates."""
    if args.get("streaming"):
        return None
    rows = int(num_samples) if num_samples is not None and file_rows is not None else file_rows
    if rows is not None and args.get("max_samples") is not None:
        rows = min(rows, int(args["max_samples"]))
    return rows


def estimated_train_samples(uses: Sequence[DatasetUse], args: dict[str, Any]) -> int | None:
    """Training examples when no trainer reported them (publishing after the fact): the concatenated rows
    less LLaMA-Factory's validation split; unknown for interleaving, which stops or repeats by chance."""
    if not uses or any(u.rows is None for u in uses) or args.get("mix_strategy", "concat") != "concat":
        return None
    total = sum(u.rows for u in uses if u.rows is not None)
    val_size = float(args.get("val_size") or 0)
    if val_size <= 1e-6:
        return total
    held_out = int(val_size) if val_size > 1 else math.ceil(val_size * total)  # datasets' train_test_split
    return max(total - held_out, 0)


def summary_from_output_dir(output_dir: Path) -> TrainingSummary:
    """Read what LLaMA-Factory left: trainer_state.json (log history) and all_results.json.

    The global batch (and so the samples seen) stays unknown: the number of processes that trained
    is not recorded in the output directory; only the callback, running inside training, knows it.
    """
    state_path = output_dir / "trainer_state.json"
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    history = state.get("log_history", [])
    losses = [row["loss"] for row in history if "loss" in row]
    runtime = next((row.get("train_runtime") for row in reversed(history) if "train_runtime" in row), None)
    mean = next((row.get("train_loss") for row in reversed(history) if "train_loss" in row), None)
    return TrainingSummary(
        global_steps=state.get("global_step"), epochs=state.get("epoch"),
        final_loss=losses[-1] if losses else None, train_loss=mean, train_runtime_s=runtime,
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("llamafactory", "transformers", "peft", "torch", "merge-proxy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def lora_settings(output_dir: Path) -> LoraSettings | None:
    """r, alpha, dropout and the resolved target modules, from the adapter LLaMA-Factory saved."""
    path = output_dir / "adapter_config.json"
    if not path.is_file():
        return None
    cfg = read_adapter_config(path)
    targets = cfg.get("target_modules") or []
    return LoraSettings(
        r=cfg.get("r"), alpha=cfg.get("lora_alpha"), dropout=cfg.get("lora_dropout"),
        use_rslora=bool(cfg.get("use_rslora")), use_dora=bool(cfg.get("use_dora")),
        target_modules=sorted(targets) if isinstance(targets, list) else targets,
    )


def build_expert_metadata(
    spec: PublishSpec, args: dict[str, Any], output_dir: Path, summary: TrainingSummary, base_model_id: str | None,
) -> ExpertMetadata:
    """The expert.json record of a training run (no secrets: only LLaMA-Factory's training settings)."""
    uses = tuple(dataset_uses(args))
    return ExpertMetadata(
        domain=spec.domain,
        artifact=artifact_kind(output_dir, spec),
        base_model=BaseModelRef(id=base_model_id, path=str(args.get("model_name_or_path")),
                                revision=args.get("model_revision") or None),
        datasets=uses,
        samples=summary.train_samples if summary.train_samples is not None else estimated_train_samples(uses, args),
        mixing={"mix_strategy": args.get("mix_strategy", "concat"), "interleave_probs": args.get("interleave_probs"),
                "max_samples": args.get("max_samples"), "val_size": args.get("val_size")},
        finetuning_type=args.get("finetuning_type", "lora"),
        lora=lora_settings(output_dir),
        template=args.get("template"),
        cutoff_len=args.get("cutoff_len"),
        learning_rate=args.get("learning_rate"),
        lr_scheduler_type=args.get("lr_scheduler_type", "linear"),
        warmup_ratio=args.get("warmup_ratio"),
        num_train_epochs=args.get("num_train_epochs"),
        max_steps=args.get("max_steps"),
        training=summary,
        seed=args.get("seed", 42),
        versions=_versions(),
        license=spec.license,
    )


def artifact_kind(output_dir: Path, spec: PublishSpec | None = None) -> Artifact:
    detected = "adapter" if (output_dir / "adapter_config.json").is_file() else "full"
    if spec and spec.artifact and spec.artifact != detected:
        raise ConfigError(
            f"expert: artifact: {spec.artifact} but {output_dir} holds a{'n' if detected == 'adapter' else ''} "
            f"{detected} checkpoint; fix artifact: or finetuning_type"
        )
    return detected


#: What LLaMA-Factory saves per finetuning_type: PEFT adapters for lora/oft, a whole model otherwise.
_ARTIFACT_BY_FINETUNING = {"lora": "adapter", "oft": "adapter", "freeze": "full", "full": "full"}


def check_artifact_before_training(spec: PublishSpec, args: dict[str, Any]) -> None:
    """Refuse an ``artifact:`` that the config's finetuning_type cannot produce, before hours of training.

    artifact_kind() checks the saved output too, but only once training is over.
    """
    finetuning = str(args.get("finetuning_type", "lora"))
    expected = _ARTIFACT_BY_FINETUNING.get(finetuning)
    if spec.artifact and expected and spec.artifact != expected:
        raise ConfigError(
            f"expert: artifact: {spec.artifact} contradicts finetuning_type: {finetuning}, which saves "
            f"{'an adapter' if expected == 'adapter' else 'a full model'}; set artifact: {expected} "
            f"(or drop it: it is detected), or change finetuning_type"
        )


def loaded_from_hub(model_name_or_path: str) -> bool:
    """Whether LLaMA-Factory loads this base from the Hub: an ORG/NAME that is no local directory."""
    return is_repo_id(model_name_or_path) and not Path(model_name_or_path).exists()


def resolve_base_model_id(
    spec: PublishSpec, args: dict[str, Any], fix: str = "add base_model: ORG/NAME (its Hub id) to the expert: block",
) -> str:
    """The Hub id of the base: ``expert.base_model``, else model_name_or_path when it is a Hub id.

    ``fix`` says how the caller's user supplies the id (a YAML key for train, a flag for publish).
    """
    if spec.base_model:
        return spec.base_model
    path = str(args.get("model_name_or_path", ""))
    if loaded_from_hub(path):
        return path
    raise ConfigError(
        f"the base model {path!r} (model_name_or_path) is a local path; {fix} so that the expert's card names its base"
    )
