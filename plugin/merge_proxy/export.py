"""Writing a merge to disk: a full transformers checkpoint, or one PEFT adapter (``--format lora``).

The full export streams the base checkpoint tensor by tensor (positioned reads, no memory maps),
merges the touched ones in row blocks that read each full expert's rows from its file, and writes
each tensor as soon as it is merged: peak memory is about one base tensor, never K models. The LoRA
export concatenates the experts' ranks, so the single adapter's delta is exactly
sum_i c_i * scaling_i * B_i @ A_i (PEFT's ``cat`` combination).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_proxy import __version__
from merge_proxy.atomic import atomic_output_dir
from merge_proxy.chat_template import ChatTemplate, write_chat_template
from merge_proxy.engine import MergeError, MergeMethod, MergePlan, progress
from merge_proxy.expert_metadata import EXPERT_METADATA_FILE
from merge_proxy.mixture import Mixture
from merge_proxy.naming import read_safetensors_index
from merge_proxy.safetensors_io import DTYPES as STORAGE
from merge_proxy.safetensors_io import NAMES, SafetensorsReader, write_streaming

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
PROVENANCE_FILE = "merge_proxy.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_NOT_COPIED = {"README.md", ".gitattributes", "model.safetensors.index.json", "pytorch_model.bin.index.json",
               EXPERT_METADATA_FILE, PROVENANCE_FILE}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    bytes_written: int
    tensors_merged: int


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def provenance(plan: MergePlan, mixture: Mixture, method: MergeMethod, fmt: str, dtype: str) -> dict:
    """What reproduces this merge: sources pinned to commit shas, weights, method."""
    return {
        "merge_proxy_version": __version__,
        "format": fmt,
        "method": method.name,
        "scale": method.scale,
        "dtype": dtype,
        "weights": mixture.as_dict(),
        "base": plan.base.provenance(named=False),
        "experts": [e.provenance() for e in plan.experts],
    }


def _card(plan: MergePlan, record: dict, fmt: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from merge_proxy.hub import looks_like_repo_id
    from merge_proxy.model_cards import card_license, hub_base_id, pipeline_tag
    from merge_proxy.resources import card_template

    base_id = hub_base_id(plan.base, plan.experts)
    expert_ids = [e.repo_id for e in plan.experts if e.repo_id and looks_like_repo_id(e.repo_id)]
    # The Hub draws the model tree from base_model: an adapter descends from the base, a merge from
    # the base and the experts merged into it; a relation that names no model is left out.
    lineage = base_id if fmt == "lora" else [i for i in (base_id, *expert_ids) if i] or None
    data = ModelCardData(
        base_model=lineage,
        base_model_relation=("adapter" if fmt == "lora" else "merge") if lineage else None,
        library_name="peft" if fmt == "lora" else "transformers",
        pipeline_tag=pipeline_tag(plan.base.path),
        tags=["merge-proxy", "merge", "merge-proxy-proxy", *(["lora"] if fmt == "lora" else [])],
        **card_license(plan.base.path, base_id, plan.base.revision),
    )
    card = ModelCard.from_template(data, template_str=card_template("merged"), record=record, fmt=fmt)
    return str(card)


def _copy_aux_files(base_dir: Path, out: Path, dtype: str) -> None:
    for src in sorted(base_dir.iterdir()):
        if src.is_dir() or src.name.startswith(".") or src.name in _NOT_COPIED:
            continue
        if src.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(src, out / src.name)
    if dtype != "auto" and (out / "config.json").is_file():
        cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
        cfg["dtype"] = dtype
        for sub in ("text_config", "vision_config"):
            if isinstance(cfg.get(sub), dict) and "dtype" in cfg[sub]:
                cfg[sub]["dtype"] = dtype
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _out_dtype_name(st_dtype: str, out_dtype: torch.dtype | None) -> str:
    if out_dtype is not None and st_dtype in ("F64", "F32", "F16", "BF16"):
        return NAMES[out_dtype]
    return st_dtype


def _shards(entries: list[tuple[str, str, tuple[int, ...], int]], max_bytes: int) -> list[list[int]]:
    """Indices of ``entries`` (key, dtype, shape, nbytes) grouped into shards of at most ``max_bytes``."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, _, _, nbytes) in enumerate(entries):
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _check_every_delta_has_a_home(plan: MergePlan, params: dict[str, str | None]) -> None:
    """Every parameter an expert changes must be written from one base checkpoint tensor.

    A base saved in the original format of a model transformers converts on load (Mixtral's
    per-expert MoE weights) has no 1:1 tensor for the fused parameter an expert saved in the
    loaded format changes; its delta would silently not be written. ``params`` maps each base
    checkpoint key to its in-memory parameter (None for converted keys).
    """
    written = set(params.values())
    homeless = [param for param in plan.touched if param not in written]
    if homeless:
        raise MergeError(
            f"the experts change {homeless[0]!r} ({len(homeless)} such parameters), which the base's checkpoint "
            "stores only in a form transformers converts on load; re-save the base with save_pretrained in the "
            "experts' format, or merge in memory (lmms-eval --model merge_proxy)"
        )


def export_full(
    plan: MergePlan,
    mixture: Mixture,
    method: MergeMethod,
    out_dir: str | Path,
    dtype: str = "auto",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    chat_template: ChatTemplate | None = None,
) -> ExportResult:
    """Write the merged model as a transformers checkpoint (sharded safetensors, base's other files).

    ``chat_template`` replaces the base's (a Qwen2-VL base evaluated in its Instruct format), so
    the stock lmms-eval backend on this checkpoint prompts as ``merge_proxy`` with
    ``chat_template_from`` does.

    Streamed: each base tensor is read (positioned reads, no memory map), merged (full experts
    read block by block) and written before the next is read, so peak memory is about two tensors.
    """
    out_dtype = DTYPES[dtype]
    index = read_safetensors_index(plan.base.path)
    if not index:
        raise MergeError(f"the base {plan.base.source!r} has no safetensors weights to merge into")
    touched = set(plan.touched)
    # Keys transformers converts on load (fused MoE experts) carry no delta (None): copied as they are.
    params = {key: plan.names.checkpoint_to_memory(key, converted_ok=True) for key in index}
    _check_every_delta_has_a_home(plan, params)
    readers = {file: SafetensorsReader(file) for file in set(index.values())}
    keys = sorted(index, key=lambda k: (index[k].name, k))
    entries = []
    for key in keys:
        info = readers[index[key]].tensors[key]
        name = _out_dtype_name(info.dtype, out_dtype)
        numel = 1
        for d in info.shape:
            numel *= d
        entries.append((key, name, info.shape, numel * torch.empty((), dtype=STORAGE[name]).element_size()))
    shards = _shards(entries, max_shard_bytes)
    record = provenance(plan, mixture, method, "full", dtype)
    if chat_template is not None:
        record["chat_template"] = {"source": chat_template.source, "pinned": chat_template.pinned_source,
                                   "sha256_12": chat_template.fingerprint}
    merged_count = 0

    def produce(indices: list[int], bar):
        nonlocal merged_count
        for i in indices:
            key = entries[i][0]
            tensor = readers[index[key]].read(key)
            param = params[key]
            cast = out_dtype if out_dtype is not None and tensor.is_floating_point() else None
            if param in touched:
                # Cast once, from the float32 accumulator straight to the output dtype.
                tensor = plan.merged_tensor(param, tensor, mixture, method, dtype=cast)
                merged_count += 1
            elif cast is not None and tensor.dtype != cast:
                tensor = tensor.to(cast)
            bar.update(1)
            yield tensor

    with atomic_output_dir(out_dir) as staging, progress(None, total=len(keys), desc="merging") as bar:
        weight_map: dict[str, str] = {}
        total = 0
        for i, shard in enumerate(shards, start=1):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            specs = [(entries[j][0], entries[j][1], entries[j][2]) for j in shard]
            write_streaming(staging / fname, specs, produce(shard, bar))
            total += sum(entries[j][3] for j in shard)
            weight_map.update({entries[j][0]: fname for j in shard})
        if len(shards) > 1:
            (staging / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
            )
        _copy_aux_files(plan.base.path, staging, dtype)
        if chat_template is not None:
            write_chat_template(staging, chat_template)
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_card(plan, record, "full"), encoding="utf-8")
        written = _dir_bytes(staging)
    logger.info("wrote merged model (%d merged tensors, %.1f MB) to %s", merged_count, written / 1e6, out_dir)
    return ExportResult(Path(out_dir), "full", written, merged_count)


def combined_lora(plan: MergePlan, mixture: Mixture, method: MergeMethod) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    """The experts' LoRA factors as one adapter: A = cat(c_i s_i A_i), B = cat(B_i), scaling 1.

    Every module gets the same rank (the largest sum of ranks; absent experts contribute zero blocks)
    so the adapter needs no rank_pattern, which not every LoRA loader (vLLM) honours.
    """
    if not plan.all_lora:
        full = ", ".join(plan.full)
        raise MergeError(f"--format lora needs LoRA experts only; {full} are full checkpoints: use --format full")
    modules = {param: plan.scaled_factors(param, mixture, method, keep_zero=True) for param in plan.touched}
    rank = max(sum(f.rank for _, f in entries) for entries in modules.values())
    tensors: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    for param, entries in modules.items():
        A = torch.cat([f.A.float() * k for k, f in entries], dim=0)
        B = torch.cat([f.B.float() for _, f in entries], dim=1)
        pad = rank - A.shape[0]
        if pad:
            A = torch.cat([A, A.new_zeros(pad, A.shape[1])], dim=0)
            B = torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
        # Named by the base's in-memory module, whatever naming generation each expert was saved in.
        module = param.removesuffix(".weight")
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = A.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = B.contiguous()
        targets.append(module)
    return tensors, rank, targets


def combined_lora_config(plan: MergePlan, rank: int, targets: list[str]) -> dict:
    """A clean adapter_config.json: nothing of one expert's config (layers_to_transform, its own
    revision, ...) leaks into an adapter that is all of them; the base is pinned as resolved."""
    transpose = any(f.transpose for factors in plan.lora.values() for f in factors.values())
    first = plan.experts[0].adapter_config or {}
    return {
        "peft_type": "LORA",
        "task_type": first.get("task_type"),
        "base_model_name_or_path": plan.base.source if plan.base.repo_id else str(plan.base.path),
        "revision": plan.base.revision,
        "r": rank,
        "lora_alpha": rank,  # scaling 1: the factors already carry every expert's weight and scaling
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": transpose,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def export_lora(
    plan: MergePlan, mixture: Mixture, method: MergeMethod, out_dir: str | Path, dtype: str = "auto"
) -> ExportResult:
    """Write ONE PEFT adapter equal to the weighted sum of the LoRA experts (loadable by PEFT and vLLM)."""
    from safetensors.torch import save_file

    tensors, rank, targets = combined_lora(plan, mixture, method)
    out_dtype = DTYPES[dtype] or torch.float32  # float32 by default: the product stays exact
    tensors = {k: v.to(out_dtype) for k, v in tensors.items()}
    config = combined_lora_config(plan, rank, targets)
    record = provenance(plan, mixture, method, "lora", dtype)
    with atomic_output_dir(out_dir) as staging:
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_card(plan, record, "lora"), encoding="utf-8")
        written = _dir_bytes(staging)
    logger.info("wrote merged LoRA adapter (rank %d, %d modules) to %s", rank, len(targets), out_dir)
    return ExportResult(Path(out_dir), "lora", written, len(targets))
