"""Merging into a loaded transformers model, and re-merging it to new weights without a reload.

Used by the lmms-eval model and by sweeps: the base is loaded once, the parameters some expert
touches are copied once (theta_0), and every (re-)merge rewrites just those parameters from theta_0.
Nothing is written to disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch

from merge_proxy.engine import MergeError, MergeMethod, MergePlan, non_finite
from merge_proxy.mixture import Mixture

logger = logging.getLogger(__name__)


class InPlaceMerger:
    """Owns theta_0 of the touched parameters of ``model`` and writes merges into the model.

    ``keep_base_on`` chooses where theta_0 lives: the parameter's own device (fastest re-merge) or
    ``"cpu"`` (saves accelerator memory; each re-merge copies theta_0 over).
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
        self._theta0 = {
            name: p.detach().to(keep_base_on or p.device, copy=True) for name, p in self._params.items()
        }
        if self._params:
            plan.move_lora(next(iter(self._params.values())).device)
        self.mixture: Mixture | None = None
        self.method: MergeMethod | None = None

    @property
    def base_copy_bytes(self) -> int:
        """Memory held for theta_0 (the price of exact, drift-free re-merges)."""
        return sum(t.numel() * t.element_size() for t in self._theta0.values())

    @torch.no_grad()
    def merge(self, weights: Mixture | Mapping[str, float] | str, method: MergeMethod | None = None) -> Mixture:
        """Set the model's touched parameters to the merge for ``weights``; returns the checked mixture."""
        method = method or self.method or MergeMethod()
        mixture = weights if isinstance(weights, Mixture) else self.plan.mixture(weights, method)
        if isinstance(weights, Mixture):
            self.plan.mixture(mixture.as_dict(), method)  # same validation for pre-built mixtures
        started = time.perf_counter()
        sums = []
        for name, param in self._params.items():
            theta0 = self._theta0[name]
            if theta0.device != param.device:
                theta0 = theta0.to(param.device)
            merged = self.plan.merged_tensor(name, theta0, mixture, method, check_finite=False)
            sums.append(merged.float().sum())
            param.data.copy_(merged)
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
        """Put theta_0 back (the model becomes the untouched base again)."""
        for name, param in self._params.items():
            param.data.copy_(self._theta0[name].to(param.device))
        self.mixture = None
