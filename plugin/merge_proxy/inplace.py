"""Merging into a loaded transformers model, and re-merging it to new weights without a reload.

Used by the lmms-eval model and by sweeps: the base is loaded once, the loaded tensors of the
parameters some expert touches become theta_0 (kept, never written), each touched parameter gets
storage of its own, and every (re-)merge writes just those parameters from theta_0. Nothing is
written to disk.

A backend may load a float32 base in 16 bits (lmms-eval's qwen2_5_vl and internvl_hf always load
bf16). Merging onto those rounded tensors would give bf16(bf16(theta_0) + delta), where
``merge-proxy merge`` exports theta_0 + delta and the backend rounds it once: a different model.
Such parameters take theta_0 from the checkpoint instead (kept in float32, 4 bytes per weight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from merge_proxy.engine import MergeError, MergeMethod, MergePlan, build_plan, non_finite, progress
from merge_proxy.errors import MergeProxyError
from merge_proxy.experts import ResolvedModel
from merge_proxy.mixture import Mixture
from merge_proxy.naming import ParameterNames, read_safetensors_index
from merge_proxy.safetensors_io import SafetensorsReader

logger = logging.getLogger(__name__)


class InPlaceMerger:
    """Owns theta_0 of the touched parameters of ``model`` and writes merges into the model.

    ``keep_base_on`` chooses where theta_0 lives: the parameter's own device (the default: the
    loaded tensors themselves, no copy; the fastest re-merge) or ``"cpu"`` (a copy there, saving
    accelerator memory; each re-merge reads theta_0 over).
    """

    def __init__(self, model: torch.nn.Module, plan: MergePlan, keep_base_on: str | None = None) -> None:
        self.model = model
        self.plan = plan
        params = dict(model.named_parameters())
        missing = [p for p in plan.touched if p not in params]
        if missing:
            raise MergeError(
                f"the loaded model has no parameter {missing[0]!r} that the experts change "
                f"({len(missing)} missing); load the base the plan was built for"
            )
        self._params = {name: params[name] for name in plan.touched}
        self._keep_base_on = torch.device(keep_base_on) if keep_base_on else None
        self._theta0: dict[str, torch.Tensor] = {}
        if self._params:
            plan.place_lora(next(iter(self._params.values())).device)
        self.mixture: Mixture | None = None
        self.method: MergeMethod | None = None

    @property
    def base_copy_bytes(self) -> int:
        """Memory held besides the model for exact, drift-free re-merges (one touched-parameter set)."""
        return sum(t.numel() * t.element_size() for t in self._theta0.values())

    def _detach_base(self) -> None:
        """Keep the loaded tensors as theta_0 and give each touched parameter fresh storage.

        A swap, not a copy: on a GPU it saves a device-wide copy, on a CPU the loaded tensors may be
        memory-mapped from the checkpoint and stay so (read, never written). A failure part-way (a
        checkpoint read) puts back what was detached, so the merger stays usable.
        """
        if self._theta0:
            return
        stored = rounded_on_load(self.plan, self._params)
        try:
            for name, param in self._params.items():
                keep_on = self._keep_base_on
                if keep_on is None or _same_device(keep_on, param.device):
                    keep_on = param.device
                if name in stored:  # the load rounded theta_0: keep the checkpoint's values, not the rounded ones
                    reader, key = stored[name]
                    self._theta0[name] = reader.read(key).to(keep_on)
                    param.data = torch.empty_like(param.data, memory_format=torch.contiguous_format)
                elif keep_on != param.device:
                    self._theta0[name] = param.data.to(keep_on, copy=True)
                else:
                    self._theta0[name] = param.data
                    param.data = torch.empty_like(param.data, memory_format=torch.contiguous_format)
        except BaseException:
            self.restore_base()
            raise

    @torch.no_grad()
    def merge(self, weights: Mixture | Mapping[str, float] | str, method: MergeMethod | None = None) -> Mixture:
        """Set the model's touched parameters to the merge for ``weights``; returns the checked mixture."""
        method = method or self.method or MergeMethod()
        # Pre-built mixtures are checked the same way and put in the plan's expert order, so a
        # merge sums the experts in one order whatever order the caller listed them in.
        mixture = self.plan.mixture(weights.as_dict() if isinstance(weights, Mixture) else weights, method)
        started = time.perf_counter()
        self._detach_base()
        sums = [
            self.plan.merge_into(name, self._theta0[name], param.data, mixture, method)
            for name, param in progress(self._params.items(), total=len(self._params), desc="merging")
        ]
        # One device sync for the whole model instead of one per parameter (which costs on a GPU).
        finite = torch.isfinite(torch.stack(sums)) if sums else torch.ones(0, dtype=torch.bool)
        if not bool(finite.all()):
            bad = [n for n, ok in zip(self._params, finite.tolist()) if not ok]
            self.restore_base()
            raise non_finite(bad[0])
        self.mixture, self.method = mixture, method
        logger.info("merged %s (%s) in %.2f s", mixture.key(), method.name, time.perf_counter() - started)
        return mixture

    remerge = merge

    @torch.no_grad()
    def restore_base(self) -> None:
        """Put theta_0 back (the model becomes the untouched base again, holding no extra copy)."""
        for name, param in self._params.items():
            theta0 = self._theta0.pop(name, None)
            if theta0 is None:
                continue
            if theta0.device == param.device and theta0.dtype == param.dtype:
                param.data = theta0
            else:
                param.data.copy_(theta0)
        self.mixture = None


def rounded_on_load(
    plan: MergePlan, params: Mapping[str, torch.Tensor]
) -> dict[str, tuple[SafetensorsReader, str]]:
    """Where a float32 base checkpoint stores theta_0 of the parameters the load rounded to 16 bits.

    Only float32 (or float64) weights loaded in bf16/fp16 are rounded by the load; for them the
    checkpoint's headers are read (no tensor data). Empty for a checkpoint loaded in its own dtype,
    the usual case, and for quantized checkpoints (an FP8 or int tensor is no theta_0 without its
    scales). The tensors are read one at a time by the caller.
    """
    narrowed = {name for name, p in params.items() if p.dtype in (torch.bfloat16, torch.float16)}
    if not narrowed or getattr(plan.names.config, "quantization_config", None):
        return {}
    readers: dict[Path, SafetensorsReader] = {}
    found: dict[str, tuple[SafetensorsReader, str]] = {}
    for key, file in read_safetensors_index(plan.base.path).items():
        name = plan.names.checkpoint_to_memory(key, converted_ok=True)
        if name not in narrowed or name in found:
            continue
        reader = readers.get(file) or readers.setdefault(file, SafetensorsReader(file))
        if reader.tensors[key].dtype in ("F32", "F64"):
            found[name] = (reader, key)
    if found:
        logger.info(
            "the base was loaded in %s but its checkpoint stores float32: %d merged parameters start from the "
            "checkpoint's values (%.0f MB kept), as `merge-proxy merge` does",
            params[next(iter(found))].dtype, len(found), sum(r.tensors[k].nbytes for r, k in found.values()) / 2**20,
        )
    return found


def _same_device(wanted: torch.device, actual: torch.device) -> bool:
    """``cuda`` (no index) names whatever GPU the parameter is on."""
    return wanted.type == actual.type and (wanted.index is None or wanted.index == actual.index)


class PlanPrefetch:
    """Builds the merge plan in a thread while the caller loads the base model.

    Loading a 2-8B base onto a GPU takes seconds; reading, checking and staging the experts' LoRA
    factors (hundreds of MB in float32, in pinned memory when a GPU is present) is a good part of
    that again. Side by side, the proxy is ready about when the base is.

    The base's parameter names come from its config on the meta device, built here in the caller's
    thread: instantiating a transformers model sets process-wide state (the default dtype), which
    must not race with the load. The thread only reads and checks files and copies tensors.
    :meth:`result` rebuilds the plan from the loaded model when that names its parameters otherwise
    (remote code), so the outcome never differs from building it after the load.
    """

    def __init__(self, base: ResolvedModel, experts: Sequence[ResolvedModel], check_declared_base: bool = True) -> None:
        self._args = (base, tuple(experts), check_declared_base)
        try:
            names = ParameterNames.from_pretrained_dir(base.path)
        except (MergeProxyError, ValueError, OSError) as err:  # remote code: the plan waits for the model
            logger.debug("no parameter names from the base's config (%s); planning after the load", err)
            self._future: Future[MergePlan] | None = None
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-proxy-plan")
        self._future = pool.submit(self._build, names)
        pool.shutdown(wait=False)

    def _build(self, names: ParameterNames) -> MergePlan:
        base, experts, check = self._args
        plan = build_plan(base, experts, names=names, check_declared_base=check)
        plan.place_lora("cpu", pin_memory=torch.cuda.is_available())
        return plan

    def result(self, model: torch.nn.Module) -> MergePlan:
        """The plan for ``model`` (the base as loaded); waits for the thread."""
        base, experts, check = self._args
        plan = None
        if self._future is not None:
            try:
                plan = self._future.result()
            except MergeProxyError as err:
                # Rebuilt from the model below: a real problem with the experts raises again there,
                # named against the loaded model's own parameters.
                logger.debug("plan from the base's config failed (%s); building it from the loaded model", err)
        loaded = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        if plan is None or {n: i.shape for n, i in plan.names.params.items()} != loaded:
            plan = build_plan(base, experts, names=ParameterNames.from_model(model), check_declared_base=check)
        return plan
