"""The one merge routine: theta = theta_0 + c * sum_i w_i * delta_i, per parameter, in float32.

``c`` is 1 for ``linear`` (weights sum to 1: a convex combination of the experts) and ``scale`` for
``task_arithmetic``. Each merged parameter is rebuilt from an untouched theta_0 in float32 and cast
once, so repeated re-merges never drift (merge/unmerge round trips in bf16 do), and parameters no
expert touches are never rewritten. The CLI export, the lmms-eval model and sweeps all call
:func:`merged_tensor` through :class:`MergePlan`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from merge_proxy.deltas import FullExpertReader, LoraFactor, load_lora_factors
from merge_proxy.errors import MergeProxyError
from merge_proxy.experts import ExpertError, ResolvedModel
from merge_proxy.mixture import Mixture, make_mixture
from merge_proxy.naming import ParameterNames

logger = logging.getLogger(__name__)


class MergeError(MergeProxyError):
    """The merge itself cannot proceed (model and plan disagree, non-finite result, ...)."""


@dataclass(frozen=True)
class MergeMethod:
    """``linear`` (weights sum to 1) or ``task_arithmetic`` (any weights, times ``scale``)."""

    name: str = "linear"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ("linear", "task_arithmetic"):
            raise MergeError(f"unknown merge method {self.name!r}; choose linear or task_arithmetic")
        if self.name == "linear" and self.scale != 1.0:
            raise MergeError("--scale applies to task_arithmetic only; linear weights already sum to 1")

    def coefficient(self, weight: float) -> float:
        return weight * (self.scale if self.name == "task_arithmetic" else 1.0)


def non_finite(param: str) -> MergeError:
    return MergeError(f"merged {param!r} has non-finite values; check the experts' weights for inf/nan")


def _names_match(declared: str, base: ResolvedModel) -> bool:
    """Whether an expert's declared base names this base.

    Adapters record whatever path they were trained from (often a local copy such as
    ``checkpoints/base_models/Qwen2-VL-2B`` of ``Qwen/Qwen2-VL-2B``), so the same Hub id, the same
    path, one ending with the other, or the same final name all count; shapes are checked anyway.
    """
    candidates = {base.source.rstrip("/"), str(base.path).rstrip("/")}
    if base.repo_id:
        candidates.add(base.repo_id)
    declared = declared.rstrip("/")
    name = declared.rsplit("/", 1)[-1]
    return any(
        declared == c or declared.endswith("/" + c) or c.endswith("/" + declared) or c.rsplit("/", 1)[-1] == name
        for c in candidates
    )


@dataclass
class MergePlan:
    """Validated experts over one base: which base parameters each expert changes, and how."""

    base: ResolvedModel
    experts: tuple[ResolvedModel, ...]
    names: ParameterNames
    lora: dict[str, dict[str, LoraFactor]] = field(default_factory=dict)
    full: dict[str, FullExpertReader] = field(default_factory=dict)

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    @property
    def touched(self) -> list[str]:
        """Base parameters some expert changes, in the model's own order."""
        hit: set[str] = set()
        for factors in self.lora.values():
            hit.update(factors)
        for reader in self.full.values():
            hit.update(reader.params)
        return [name for name in self.names.params if name in hit]

    @property
    def all_lora(self) -> bool:
        return not self.full

    def mixture(self, weights, method: MergeMethod) -> Mixture:
        """Weights (a mapping or ``NAME=W;...`` text) checked against these experts and the method."""
        return make_mixture(weights, self.expert_names, method.name)

    def move_lora(self, device: torch.device | str) -> None:
        """Keep every LoRA factor in float32 on ``device``, moved in ONE copy per expert.

        A 2B model has ~200 adapted layers per expert; a copy per factor costs ~100 us of launch and
        sync each on a GPU, more than the merge itself. The factors become views of one buffer.
        """
        import dataclasses

        device = torch.device(device)
        for name, factors in self.lora.items():
            if all(f.A.device == device and f.A.dtype == torch.float32 for f in factors.values()):
                continue
            parts = [t for f in factors.values() for t in (f.A, f.B)]
            flat = torch.cat([t.reshape(-1).to(torch.float32) for t in parts]).to(device)
            views, offset = [], 0
            for t in parts:
                views.append(flat[offset: offset + t.numel()].view(t.shape))
                offset += t.numel()
            self.lora[name] = {
                param: dataclasses.replace(f, A=views[2 * i], B=views[2 * i + 1])
                for i, (param, f) in enumerate(factors.items())
            }

    def merged_tensor(
        self, param: str, theta0: torch.Tensor, mixture: Mixture, method: MergeMethod, check_finite: bool = True
    ) -> torch.Tensor:
        """theta_0 + sum_i c_i * delta_i for one parameter, accumulated in float32, in theta_0's dtype.

        Computed on theta_0's device: LoRA factors move there (they are small), full-expert tensors
        are read from their memory map one at a time.
        """
        acc = theta0.to(torch.float32, copy=True)
        full_total = 0.0
        for name, weight in mixture.weights:
            coef = method.coefficient(weight)
            if coef == 0.0:
                continue
            factor = self.lora.get(name, {}).get(param)
            if factor is not None:
                A = factor.A.to(device=acc.device, dtype=torch.float32)
                B = factor.B.to(device=acc.device, dtype=torch.float32)
                if factor.transpose:
                    acc.addmm_(A.T, B.T, alpha=coef * factor.scaling)
                else:
                    acc.addmm_(B, A, alpha=coef * factor.scaling)
            reader = self.full.get(name)
            if reader is not None and param in reader.params:
                # sum_i c_i (theta_i - theta_0) as sum_i c_i theta_i - (sum_i c_i) theta_0: no float32
                # temporaries per expert (in-place add promotes bf16 to float32 as it goes).
                acc.add_(reader.tensor(param).to(acc.device), alpha=coef)
                full_total += coef
        if full_total:
            acc.add_(theta0, alpha=-full_total)
        # One reduction instead of an elementwise mask: inf or nan anywhere makes the sum non-finite.
        if check_finite and not torch.isfinite(acc.sum()):
            raise non_finite(param)
        return acc.to(theta0.dtype)


def build_plan(
    base: ResolvedModel,
    experts: Sequence[ResolvedModel],
    names: ParameterNames | None = None,
    check_declared_base: bool = True,
    device: torch.device | str = "cpu",
) -> MergePlan:
    """Validate every expert against the base before any merge work; raise naming the expert and fix.

    ``names`` comes from the loaded model when merging in memory; otherwise it is built on the meta
    device from the base's config. ``device`` is where LoRA factors are loaded (the model's device
    for an in-memory merge).
    """
    if base.kind != "full":
        raise ExpertError(f"the base {base.source!r} is a LoRA adapter; pass the model it adapts as the base")
    names = names or ParameterNames.from_pretrained_dir(base.path)
    _check_architecture(base, experts, names)
    plan = MergePlan(base=base, experts=tuple(experts), names=names)
    for expert in experts:
        declared = expert.declared_bases
        if check_declared_base and declared and not any(_names_match(d, base) for d in declared):
            raise ExpertError(
                f"expert {expert.name!r} declares base model {declared[0]!r}, but the base is {base.source!r}; "
                "merge experts of one base only (or pass --no-base-check if they are the same weights)"
            )
        if expert.kind == "lora":
            plan.lora[expert.name] = load_lora_factors(expert, names, device)
        else:
            plan.full[expert.name] = FullExpertReader(expert, names)
    logger.info(
        "merge plan: %d experts (%d LoRA, %d full) change %d of %d base parameters",
        len(experts), len(plan.lora), len(plan.full), len(plan.touched), len(names.params),
    )
    return plan


def _check_architecture(base: ResolvedModel, experts: Sequence[ResolvedModel], names: ParameterNames) -> None:
    import json

    for expert in experts:
        if expert.kind != "full":
            continue
        cfg = json.loads((expert.path / "config.json").read_text(encoding="utf-8"))
        if cfg.get("model_type") != names.model_type:
            raise ExpertError(
                f"expert {expert.name!r} is a {cfg.get('model_type')!r} model but the base is "
                f"{names.model_type!r}; all experts must be fine-tuned from the same base"
            )
