"""Expert weight deltas, read lazily: LoRA factors (A, B, scaling) and full-checkpoint tensors.

A LoRA expert's delta on a weight W is ``scaling * B @ A``; it is kept factored (a few MB) and
multiplied out one parameter at a time during a merge. A full expert's delta is ``theta_i - theta_0``;
its tensors are read from safetensors with positioned reads, a block of rows at a time, so K full
experts never sit in memory together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import KeysView
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_proxy.experts import ExpertError, ResolvedModel
from merge_proxy.naming import NamingError, ParameterNames, read_safetensors_index
from merge_proxy.safetensors_io import SafetensorsReader

logger = logging.getLogger(__name__)

_LORA_KEY_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
_PEFT_PREFIX = "base_model.model."
#: Initialisations that also change the base weights (PiSSA, OLoRA, CorDA: a residual of the
#: principal components; LoftQ: a quantised base). Their adapters add to that modified base.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass(frozen=True)
class LoraFactor:
    """One adapted weight: delta = scaling * B @ A (transposed for fan_in_fan_out layers)."""

    module: str
    """The module path as written in the adapter (kept for LoRA-format exports)."""
    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    transpose: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def _refuse_unsupported_lora(expert: ResolvedModel, cfg: dict) -> None:
    """Adapters whose effect is not a plain additive weight delta are refused, never approximated."""
    label = f"expert {expert.name!r} ({expert.source})"
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExpertError(f"{label} is a {cfg.get('peft_type')} adapter; merge-proxy merges LoRA adapters only")
    problems = []
    if cfg.get("use_dora"):
        problems.append("DoRA (use_dora: its magnitude vector rescales W, not a weight delta)")
    if cfg.get("lora_bias"):
        problems.append("lora_bias (trained bias vectors)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg.get('bias')!r} (trained bias vectors)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} (whole modules replaced)")
    if cfg.get("trainable_token_indices"):
        problems.append("trainable_token_indices")
    if cfg.get("target_parameters"):
        problems.append("target_parameters")
    if cfg.get("layer_replication"):
        problems.append("layer_replication")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        problems.append(
            f"init_lora_weights={init!r} saved without conversion (its delta is against a modified base; "
            "save with path_initial_model_for_weight_conversion, or LLaMA-Factory's pissa_convert, to get "
            "a plain LoRA)"
        )
    if cfg.get("alora_invocation_tokens"):
        problems.append("aLoRA (alora_invocation_tokens: active only after its invocation tokens)")
    if cfg.get("use_qalora"):
        problems.append("QALoRA (use_qalora: A reads pooled inputs)")
    if problems:
        raise ExpertError(
            f"{label} uses {'; '.join(problems)}, which is not a plain weight delta and would not be "
            "merged exactly; retrain it as plain LoRA (LLaMA-Factory: use_dora false, no additional_target), "
            "or export it to a full model and pass that as a full expert"
        )


def _scaling(cfg: dict, module: str) -> tuple[int, float]:
    from peft.utils.other import get_pattern_key

    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), cfg.get("r", 8))
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), cfg.get("lora_alpha", 8))
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return int(r), float(scaling)


def _load_adapter_tensors(expert: ResolvedModel) -> dict[str, torch.Tensor]:
    """On the CPU: :meth:`MergePlan.place_lora` moves each expert to the merge's device in one copy."""
    st = expert.path / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(st)
    # Only reachable with allow_pickle (the resolver refused otherwise); weights_only still refuses code.
    return torch.load(expert.path / "adapter_model.bin", map_location="cpu", weights_only=True)


def load_lora_factors(expert: ResolvedModel, names: ParameterNames) -> dict[str, LoraFactor]:
    """Base parameter name -> LoRA factor (float32, on the CPU), validated against the base."""
    cfg = expert.adapter_config or {}
    _refuse_unsupported_lora(expert, cfg)
    tensors = {k: v.float() for k, v in _load_adapter_tensors(expert).items()}
    label = f"expert {expert.name!r}"
    for key, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ExpertError(
                f"{label}: adapter tensor {key!r} holds inf or nan values; the training diverged or the "
                "file is damaged: retrain the expert or publish a healthy checkpoint"
            )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        suffix = next((s for s in _LORA_KEY_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ExpertError(
                f"{label}: adapter tensor {key!r} is not a LoRA A/B matrix (embedding LoRA, biases or saved "
                "modules); merge-proxy merges linear-layer LoRA only"
            )
        module = key[: -len(suffix)]
        module = module[len(_PEFT_PREFIX):] if module.startswith(_PEFT_PREFIX) else module
        pairs.setdefault(module, {})[suffix[1:7]] = tensor

    factors: dict[str, LoraFactor] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise ExpertError(f"{label}: module {module!r} has {sorted(ab)} but needs both lora_A and lora_B")
        param = names.module_to_param(module)
        if param is None:
            raise NamingError(
                f"{label}: adapter module {module!r} matches no parameter of the base model "
                f"({names.model_type}); was this expert trained from a different base?"
            )
        if param in factors:
            raise NamingError(
                f"{label}: modules {factors[param].module!r} and {module!r} both map to {param!r}; the adapter "
                "holds the same layer twice (two naming generations mixed): keep one of the two keys"
            )
        r, scaling = _scaling(cfg, module)
        A, B = ab["lora_A"], ab["lora_B"]
        # As PEFT does: fan_in_fan_out applies to transformers' Conv1D layers (always), never to
        # nn.Linear, whatever the config says.
        transpose = names.is_conv1d(param)
        shape = (B.shape[0], A.shape[1]) if not transpose else (A.shape[1], B.shape[0])
        if A.shape[0] != r or B.shape[1] != r:
            raise ExpertError(f"{label}: {module!r} has rank {A.shape[0]}x{B.shape[1]}, config says r={r}")
        if tuple(shape) != names.params[param].shape:
            raise ExpertError(
                f"{label}: {module!r} gives a {tuple(shape)} delta but base parameter {param!r} is "
                f"{names.params[param].shape}; the expert was trained from a different base model"
            )
        factors[param] = LoraFactor(module=module, A=A, B=B, scaling=scaling, transpose=transpose)
    if not factors:
        raise ExpertError(f"{label}: the adapter holds no LoRA weights")
    return factors


class FullExpertReader:
    """A full fine-tuned checkpoint read on demand: base parameter name -> tensor (or rows of it)."""

    def __init__(self, expert: ResolvedModel, names: ParameterNames) -> None:
        self.expert = expert
        self._where: dict[str, tuple[Path, str]] = {}
        label = f"expert {expert.name!r}"
        index = read_safetensors_index(expert.path)
        if not index:
            raise ExpertError(f"{label}: no safetensors weights in {expert.path}")
        for key, file in index.items():
            try:
                param = names.checkpoint_to_memory(key)
            except NamingError as err:
                raise NamingError(f"{label}: {err}") from None
            if param is None:
                raise NamingError(
                    f"{label}: checkpoint tensor {key!r} matches no parameter of the base model "
                    f"({names.model_type}); was this expert trained from a different base?"
                )
            if param in self._where:
                raise NamingError(
                    f"{label}: tensors {self._where[param][1]!r} and {key!r} both map to {param!r}; the "
                    "checkpoint holds the same weight twice (two naming generations mixed): re-save it with "
                    "transformers' save_pretrained"
                )
            self._where[param] = (file, key)
        self._readers: dict[Path, SafetensorsReader] = {}
        for param, (file, key) in self._where.items():
            shape = self._reader(file).tensors[key].shape
            if shape != names.params[param].shape:
                raise ExpertError(
                    f"{label}: tensor for {param!r} is {shape} but the base has "
                    f"{names.params[param].shape}; the expert was trained from a different base model"
                )

    def _reader(self, file: Path) -> SafetensorsReader:
        if file not in self._readers:
            self._readers[file] = SafetensorsReader(file)
        return self._readers[file]

    @property
    def params(self) -> KeysView[str]:
        """The base parameters this expert holds (a view: merges test membership per parameter)."""
        return self._where.keys()

    def rows(self, param: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of one tensor (first dimension), read with a positioned read: no
        memory map keeps the checkpoint resident."""
        file, key = self._where[param]
        return self._reader(file).read_rows(key, start, stop)
