"""A transformers TrainerCallback that publishes the trained expert with its provenance.

LLaMA-Factory fires ``on_train_end`` *before* it saves the final model and its README, and no callback
event follows the save. So the callback records what only the trainer knows (steps, loss, runtime,
world size) at ``on_train_end`` and publishes from ``finish()``, called once ``run_exp`` has returned
and the output directory is complete::

    publisher = ExpertPublisher(PublishSpec(domain="ocr", repo_id="me/ocr-expert"), args)
    run_exp(args=args, callbacks=[publisher])
    publisher.finish()

``merge-proxy train`` does exactly this on every rank; only the main process writes and publishes. A
caller that forgets ``finish()`` still gets the publication at interpreter exit, but only when the
interpreter exits normally: ``on_train_end`` fires before LLaMA-Factory saves the model, its metrics
and runs evaluation, so a run that fails after it (a failed save, Ctrl-C) must never publish what the
output directory then holds (nothing, or an older run's adapter). A caller that catches the failure
itself calls ``abandon()``.
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from merge_proxy.expert_metadata import ExpertMetadata, TrainingSummary, write_expert_metadata
from merge_proxy.hub import HubOptions
from merge_proxy.provenance import PublishSpec, build_expert_metadata, resolve_base_model_id
from merge_proxy.publish import Publication, publish_expert

logger = logging.getLogger(__name__)


class ExpertPublisher(TrainerCallback):
    """Publishes LLaMA-Factory's output as a merge-proxy expert, from the main process only."""

    def __init__(self, spec: PublishSpec, train_args: dict[str, Any], hub: HubOptions | None = None) -> None:
        self.spec = spec
        self.train_args = dict(train_args)
        self.hub = hub or HubOptions()
        self.base_model_id = resolve_base_model_id(spec, self.train_args) if spec.push else spec.base_model
        self.summary: TrainingSummary | None = None
        self.publication: Publication | None = None
        self._is_main = False
        self._started: float | None = None
        self._finished = False
        self._last_loss: float | None = None
        self._train_loss: float | None = None
        self._train_samples: int | None = None

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._started = time.monotonic()
        self._train_samples = _dataset_length(train_dataloader)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._last_loss = float(logs["loss"])
        if logs and "train_loss" in logs:  # the trainer's last log: the run's mean loss
            self._train_loss = float(logs["train_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        self._is_main = bool(state.is_world_process_zero)
        if not self._is_main:
            return
        world = int(getattr(args, "world_size", 1) or 1)
        self.summary = TrainingSummary(
            global_steps=int(state.global_step),
            epochs=float(state.epoch) if state.epoch is not None else None,
            final_loss=self._last_loss,
            train_loss=self._train_loss,
            train_runtime_s=round(time.monotonic() - self._started, 3) if self._started else None,
            global_batch_size=int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world,
            train_samples=self._train_samples,
        )
        atexit.register(self._finish_at_exit)

    # ------------------------------------------------------------------ publication

    @property
    def output_dir(self) -> Path:
        return Path(str(self.train_args.get("output_dir", "."))).resolve()

    def expert_document(self) -> ExpertMetadata:
        assert self.summary is not None
        return build_expert_metadata(self.spec, self.train_args, self.output_dir, self.summary, self.base_model_id)

    def finish(self) -> Publication | None:
        """Write expert.json beside LLaMA-Factory's output and publish it (main process, once)."""
        if self._finished or not self._is_main or self.summary is None:
            return None
        self._finished = True
        expert = self.expert_document()
        written = write_expert_metadata(self.output_dir, expert)
        if not self.spec.push:
            logger.info("expert: push is false; wrote %s only", written)
            return None
        assert self.base_model_id is not None
        self.publication = publish_expert(self.output_dir, self.spec, expert, self.base_model_id, self.hub)
        if self.publication.expert.to_text() != expert.to_text():  # keep the local copy identical to the published one
            write_expert_metadata(self.output_dir, self.publication.expert)
        return self.publication

    def abandon(self, reason: str = "training failed") -> None:
        """Never publish from this callback: run_exp raised after on_train_end, so the output is suspect."""
        if not self._finished and self._is_main and self.summary is not None:
            logger.error("expert: %s after the last training step; nothing published", reason)
        self._finished = True
        atexit.unregister(self._finish_at_exit)

    def _finish_at_exit(self) -> None:
        """The fallback for a caller that forgot finish(): only when no exception ended the program."""
        if self._finished:
            return
        failure = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if failure is not None:  # set by the interpreter for an exception nobody handled
            self.abandon(f"the program ended with {type(failure).__name__}")
            return
        try:
            self.finish()
        except Exception as err:  # noqa: BLE001 - at exit, report instead of a traceback
            logger.error("%s", err)


def _dataset_length(train_dataloader: Any) -> int | None:
    """Examples in the training split: what was really trained on, after LLaMA-Factory's sampling, mixing
    and validation split, none of which it records (the full dataset on every rank: samplers shard it)."""
    dataset = getattr(train_dataloader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an iterable (streamed) dataset has no length
        return None
