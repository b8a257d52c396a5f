"""Run the real ``lmms-eval`` command line and read back what it wrote.

lmms-eval 0.7.3 exits 0 on many failures unless ``--verbosity DEBUG``; the only trustworthy signal is
the results file, so this helper judges a run by that file and surfaces the log tail when it is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class LmmsEvalRunError(RuntimeError):
    """lmms-eval wrote no results file; the message carries the end of its log."""


@dataclass(frozen=True)
class LmmsEvalRun:
    """One finished CLI run: its results JSON, per-sample logs and the raw log."""

    results: dict
    results_file: Path
    samples_files: dict[str, Path]
    log: str

    def metric(self, task: str, metric: str = "exact_match", filter_name: str = "none") -> float:
        """A task's aggregated metric, as lmms-eval keys it (``"<metric>,<filter>"``)."""
        return float(self.results["results"][task][f"{metric},{filter_name}"])

    def samples(self, task: str) -> list[dict]:
        """The per-sample records of ``task`` (needs ``log_samples=True``)."""
        lines = self.samples_files[task].read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def responses(self, task: str) -> dict[int, str]:
        """doc_id -> the model's (filtered) answer to it."""
        return responses(self.samples(task))


def response(sample: Mapping) -> str:
    """A sample's filtered answer: lmms-eval 0.7.3 keeps ``filtered_resps`` a list in memory
    (``simple_evaluate(...)["samples"]``) but writes a single answer as a plain string to the
    samples file, where indexing it would give its first character."""
    answer = sample["filtered_resps"]
    return answer if isinstance(answer, str) else answer[0]


def responses(samples: Sequence[Mapping]) -> dict[int, str]:
    """doc_id -> answer, for the samples of one task (from a samples file or ``simple_evaluate``)."""
    return {sample["doc_id"]: response(sample) for sample in samples}


def lmms_eval_command(
    model: str,
    model_args: str,
    tasks: Sequence[str],
    output_path: Path,
    include_path: Path | None = None,
    limit: int | None = None,
    log_samples: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv of an lmms-eval CLI run, with the interpreter running the tests."""
    cmd = [
        sys.executable, "-m", "lmms_eval",
        "--model", model,
        "--model_args", model_args,
        "--tasks", ",".join(tasks),
        "--batch_size", "1",
        "--output_path", str(output_path),
    ]
    if include_path is not None:
        cmd += ["--include_path", str(include_path)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if log_samples:
        cmd.append("--log_samples")
    return cmd + list(extra)


def run_lmms_eval(
    model: str,
    model_args: str,
    tasks: Sequence[str],
    output_path: str | Path,
    include_path: str | Path | None = None,
    limit: int | None = None,
    log_samples: bool = True,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> LmmsEvalRun:
    """Run ``lmms-eval`` in a subprocess (offline, CPU) and return what it wrote under ``output_path``."""
    output_path = Path(output_path)
    cmd = lmms_eval_command(
        model, model_args, tasks, output_path,
        Path(include_path) if include_path else None, limit, log_samples, extra,
    )
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env)
    log = proc.stdout + proc.stderr
    results = sorted(output_path.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not results:
        raise LmmsEvalRunError(
            f"lmms-eval (exit {proc.returncode}) wrote no results under {output_path}:\n{log[-4000:]}"
        )
    results_file = results[-1]
    prefix = results_file.name[: -len("_results.json")]
    samples = {
        p.name[len(prefix) + len("_samples_") : -len(".jsonl")]: p
        for p in results_file.parent.glob(f"{prefix}_samples_*.jsonl")
    }
    return LmmsEvalRun(
        results=json.loads(results_file.read_text(encoding="utf-8")),
        results_file=results_file,
        samples_files=samples,
        log=log,
    )
