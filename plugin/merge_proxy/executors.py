"""Where a sweep's shards run: SLURM jobs or local processes, through submitit.

The sweep decides what each shard scores (:func:`merge_proxy.sweep.run_shard`); this module builds
submitit's executors from the recipe's ``executor:`` keys, places local shards on the node's GPUs,
waits for the jobs and cancels them when the submitter is interrupted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge_proxy.errors import ConfigError

logger = logging.getLogger(__name__)


def slurm_executor(out: Path, name: str, params: dict[str, Any]) -> Any:
    """submitit's SLURM executor with the recipe's executor keys in submitit's names."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=out / "submitit", cluster="slurm")
    except RuntimeError as err:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise ConfigError(f"cannot submit SLURM jobs from this machine ({err}); run the sweep on a SLURM login "
                          "node, or use --executor local (this process) or submitit-local") from None
    mapped: dict[str, Any] = {"timeout_min": int(params.get("timeout_min", 240))}
    for key, target in (("partition", "slurm_partition"), ("gpus_per_node", "gpus_per_node"),
                        ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb"),
                        ("array_parallelism", "slurm_array_parallelism"), ("account", "slurm_account"),
                        ("qos", "slurm_qos")):
        if key in params:
            mapped[target] = params[key]
    executor.update_parameters(name=f"merge-proxy-{name}", **mapped)
    return executor


def local_executor(out: Path, timeout: int | None) -> Any:
    """submitit's LocalExecutor itself (only it takes visible_gpus, to place each shard), without a
    time limit unless the recipe sets one: no scheduler asks for one here, and SLURM's 4-hour default
    would stop a long local sweep part-way (submitit then reports a bare KeyboardInterrupt)."""
    import submitit

    executor = submitit.LocalExecutor(folder=out / "submitit")
    executor.update_parameters(timeout_min=_NO_LIMIT_MIN if timeout is None else int(timeout))
    logger.info("local shards run %s", "without a time limit (executor timeout_min sets one)"
                if timeout is None else f"for at most {int(timeout)} min (executor timeout_min)")
    return executor


#: submitit-local's time limit when the recipe sets none: a year.
_NO_LIMIT_MIN = 60 * 24 * 365


def local_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them, else every GPU torch sees.

    Read as CUDA reads it (and torch, ``torch.cuda._parse_visible_devices``): indices up to the first
    entry that is empty, negative or not a number (``-1``: no GPU; ``0,,1``: GPU 0 only), no GPU at
    all when an index repeats; ``GPU-``/``MIG-`` UUIDs are kept as names."""
    import re

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    gpus: list[str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.startswith(("GPU-", "MIG-")):
            gpus.append(entry)
            continue
        index = re.match(r"\d+", entry)
        if index is None:
            break
        if str(int(index.group())) in gpus:
            return []
        gpus.append(str(int(index.group())))
    return gpus


def shard_gpus(shards: int, per_shard: int, gpus: Sequence[str]) -> list[tuple[str, ...]]:
    """The GPUs of each local shard, round robin: shard i takes the next ``per_shard`` GPUs, so 8
    shards on an 8-GPU node get one each (more shards than GPUs share them)."""
    if per_shard > len(gpus):
        raise ConfigError(f"executor gpus_per_node: {per_shard}, but this machine shows {len(gpus)} GPU(s) "
                          f"({', '.join(gpus) or 'none'}); lower gpus_per_node or set CUDA_VISIBLE_DEVICES")
    if per_shard == 0:
        return [()] * shards
    return [tuple(gpus[(i * per_shard + k) % len(gpus)] for k in range(per_shard)) for i in range(shards)]


def submit_local(executor: Any, fn: Callable[..., Any], args: tuple[list, ...], gpus_per_node: int | None,
                 jobs: list[Any]) -> None:
    """One submitit-local job per shard, each on its own GPUs, appended to ``jobs`` as it starts (an
    interrupt part-way cancels those). submitit's local executor sets every job's
    CUDA_VISIBLE_DEVICES to the first gpus_per_node GPUs (none by default: shards on a GPU node ran
    on the CPU), so the devices are given job by job (``visible_gpus``)."""
    import signal

    gpus = local_gpus()
    per_shard = (1 if gpus else 0) if gpus_per_node is None else gpus_per_node
    if per_shard and not all(g.isdigit() for g in gpus):
        raise ConfigError(f"CUDA_VISIBLE_DEVICES names GPUs by UUID ({', '.join(gpus)}); submitit-local places "
                          "shards by GPU index: give indices (e.g. 0,1,2,3), or use --executor local")
    placement = shard_gpus(len(args[0]), per_shard, gpus)
    if per_shard and len(placement) * per_shard > len(gpus):
        logger.warning("%d shards x %d GPU(s) on %d GPU(s): shards share GPUs (each loads its own model); "
                       "pass --shards %d for one per GPU", len(placement), per_shard, len(gpus),
                       max(1, len(gpus) // per_shard))
    # submitit cancels a local job with SIGINT; a submitter started with SIGINT ignored (`cmd &` in a
    # script) would pass that on and make its shards uncancellable: they start with it at default.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        for i, devices in enumerate(placement):
            executor.update_parameters(gpus_per_node=len(devices), visible_gpus=tuple(int(d) for d in devices))
            jobs.append(executor.submit(fn, *(a[i] for a in args)))
            logger.info("shard %d of %d on %s", i + 1, len(placement),
                        f"GPU {', '.join(devices)}" if devices else "the CPU (no GPU visible)")
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class ShardFailure:
    """A shard job that failed: its own exception line (not submitit's log paths) and whether the
    cause is one a user must fix first (one of our errors: a rerun alone would fail the same way)."""

    job_id: str
    cause: str
    needs_fix: bool

    def __str__(self) -> str:
        return f"job {self.job_id}: {self.cause}"


#: A traceback's last line: ``module.ExceptionType: message`` (or the bare type).
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?::\s*(?P<msg>.*))?$")


def failure_of(job_id: str, err: BaseException) -> ShardFailure:
    """submitit's FailedJobError holds the job's traceback between dashes, then log paths: keep the
    traceback's exception line, our errors' message alone (they are written to be read that way)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = [m for m in map(_EXCEPTION_LINE.match, lines) if m]
    if not found:
        return ShardFailure(job_id, lines[-1] if lines else type(err).__name__, False)
    last = found[-1]
    ours = last["type"].startswith("merge_proxy.")
    cause = last["msg"] if ours and last["msg"] else last["type"].rsplit(".", 1)[-1] + (
        f": {last['msg']}" if last["msg"] else "")
    return ShardFailure(job_id, cause, ours)


def wait(jobs: Sequence[Any]) -> list[ShardFailure]:
    """Wait for every job; what each failed one raised, for one error at the end."""
    failures = []
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - report every failed shard, then fail once
            failures.append(failure_of(str(job.job_id), err))
    return failures


def cancel(jobs: Sequence[Any]) -> None:
    """The submitter was interrupted: its jobs go with it (an orphaned shard would keep a GPU busy
    for a sweep nobody waits for). Each job journals per score, so the rerun keeps their work."""
    running = [job for job in jobs if not _finished(job)]
    stuck = []
    for job in running:
        try:
            job.cancel(check=False)
        except OSError:  # scancel missing from this node's PATH
            stuck.append(job.job_id)
    cancelled = [job.job_id for job in running if job.job_id not in stuck]
    if cancelled:
        logger.warning("interrupted: cancelled %d shard job(s) (%s); the scores they journaled are kept, rerun "
                       "the same command to continue", len(cancelled), ", ".join(cancelled))
    if stuck:
        logger.error("could not cancel job(s) %s (no scancel here): cancel them with `scancel %s`",
                     ", ".join(stuck), " ".join(stuck))


def _finished(job: Any) -> bool:
    try:
        return bool(job.done())
    except Exception:  # noqa: BLE001 - sacct unreachable: cancelling a finished job is harmless
        return False
