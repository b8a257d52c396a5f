"""The model-free bookkeeping of a large sweep, ours against the simple alternative, side by side.

A sweep of thousands of mixtures x 14 benchmarks keeps a journal of 10^5-10^6 records; the steps
that only read, fold or digest it must not dominate a day of GPU work, nor a report on a laptop.
Each line times our implementation and the straightforward one it replaced, on the same synthetic
data, checks they agree, and prints the ratio:

- serialising records (the journal's lines and the report's digest): ``vars`` vs ``dataclasses.asdict``;
- reading a journal with the cyclic garbage collector paused vs running, and the memory its records
  hold with the provenance every record repeats shared vs copied;
- folding S shard journals into one: held keys kept incrementally vs rebuilt per shard;
- Kendall's tau-b on 2,000 bootstrap resamples: resample counts x sign matrices vs pairwise arrays;
- and `merge-proxy report` end to end (no alternative: its wall time).

    .venv/bin/python benchmarks/journal_scale.py                 # 5,000 mixtures, about 2 min on 2 cores
    .venv/bin/python benchmarks/journal_scale.py --mixtures 20000 --shards 256 --truth 500
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from merge_proxy.correlation import bootstrap_indices, resample_statistics
from merge_proxy.generators import dirichlet
from merge_proxy.journal import Journal, JournalRecord, read_with_shards, records_digest

SHA = "0123456789abcdef0123456789abcdef01234567"
BENCHMARKS = [f"task_{i:02d}" for i in range(14)]
DOMAINS = ["chart", "counting", "general", "ocr"]


def synthetic_records(n_mixtures: int, mode: str = "proxy", seed: int = 0) -> list[JournalRecord]:
    """Records with the provenance a real sweep writes (pinned base and experts, settings, timings)."""
    rng = np.random.default_rng(seed)
    base = {"source": "Qwen/Qwen2-VL-2B", "pinned": f"Qwen/Qwen2-VL-2B@{SHA}", "revision": SHA, "fingerprint": None}
    experts = [{"name": d, "source": f"org/{d}-expert", "pinned": f"org/{d}-expert@{SHA}", "revision": SHA,
                "fingerprint": None} for d in DOMAINS]
    settings = {"limit": None, "metric": "exact_match", "method": "linear", "scale": None, "backend": "qwen2_vl",
                "backend_args": {"device_map": "cuda", "max_pixels": 602112}, "postprocess": "lmms-eval-cli"}
    coef = rng.uniform(0.1, 0.9, (len(BENCHMARKS), len(DOMAINS)))
    out = []
    for mixture in dirichlet(DOMAINS, n_mixtures, 1.0, seed):
        w = mixture.as_dict()
        vec = np.array([w[d] for d in DOMAINS])
        for b, c in zip(BENCHMARKS, coef):
            score = float(c @ vec + rng.normal(0, 0.01))
            out.append(JournalRecord(mode, mixture.key(), w, b, score, {"exact_match,none": score}, base, experts,
                                     timings={"merge_s": 0.0, "eval_s": 123.4}, settings=settings))
    return out


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def row(label: str, ours: float, other: float, same: bool) -> None:
    print(f"{label:<52} {ours:8.2f} s {other:9.2f} s {other / ours:7.1f}x  {'same' if same else 'DIFFERENT'}",
          flush=True)


def old_fold(journal: Path) -> list[JournalRecord]:
    """The per-shard fold: every shard rebuilds the held keys from everything held so far."""
    records = Journal(journal).records()
    fresh: list[JournalRecord] = []
    for shard in sorted((journal.parent / "shards").glob("*.jsonl")):
        held = records + fresh
        seen = {r.key for r in held}
        finite = {r.key for r in held if math.isfinite(r.score)}
        for r in Journal(shard).records():
            good = math.isfinite(r.score)
            if r.key not in seen or (good and r.key not in finite):
                fresh.append(r)
                seen.add(r.key)
                if good:
                    finite.add(r.key)
    return fresh


def plain_read(path: Path) -> list[JournalRecord]:
    """Every line parsed into its own objects: the provenance dicts copied per record."""
    with path.open(encoding="utf-8") as fh:
        return [JournalRecord.from_dict(json.loads(line)) for line in fh]


def held_kib(read) -> float:
    """KiB per record that the records of ``read()`` hold (tracemalloc: what Python allocated)."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    records = read()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return held / 1024 / len(records)


def pairwise_kendall(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """tau-b of each resample from its n x n sign arrays, in chunks of about 4M entries."""
    out = []
    step = max(1, 4_000_000 // (x.size * x.size))
    for i in range(0, len(idx), step):
        xs, ys = x[idx[i:i + step]], y[idx[i:i + step]]
        sx = np.sign(xs[:, :, None] - xs[:, None, :])
        sy = np.sign(ys[:, :, None] - ys[:, None, :])
        denom = np.sqrt(np.abs(sx).sum(axis=(1, 2)) * np.abs(sy).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = np.clip((sx * sy).sum(axis=(1, 2)) / denom, -1, 1)
        tau[denom == 0] = np.nan
        out.append(tau)
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixtures", type=int, default=5000, help="proxy mixtures (x 14 benchmarks records)")
    p.add_argument("--shards", type=int, default=64, help="shard journals the records are spread over")
    p.add_argument("--truth", type=int, nargs="+", default=[200, 500], help="truth mixtures for the bootstrap")
    args = p.parse_args()

    records = synthetic_records(args.mixtures)
    print(f"{len(records):,} records ({args.mixtures:,} mixtures x {len(BENCHMARKS)} benchmarks, "
          f"{len(DOMAINS)} domains)\n")
    print(f"{'step':<52} {'ours':>10} {'alternative':>11} {'ratio':>8}")

    t_ours, ours = timed(lambda: [r.to_json() for r in records])
    def with_asdict(r: JournalRecord) -> str:
        data = {k: v for k, v in asdict(r).items() if v is not None or k != "model_fingerprint"}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    t_old, old = timed(lambda: [with_asdict(r) for r in records])
    row("serialise every record (vars vs asdict)", t_ours, t_old, ours == old)

    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        Journal(sweep / "journal.jsonl").append_many(records)

        def read_with_gc() -> list[JournalRecord]:
            return list(Journal(sweep / "journal.jsonl")._iter())

        t_ours, ours = timed(lambda: Journal(sweep / "journal.jsonl").records())
        t_old, old = timed(read_with_gc)
        row("read the journal (collector paused vs running)", t_ours, t_old, ours == old)
        kib_ours, kib_old = held_kib(lambda: Journal(sweep / "journal.jsonl").records()), held_kib(
            lambda: plain_read(sweep / "journal.jsonl"))
        print(f"{'memory of the records read, KiB each (shared vs copied)':<52} {kib_ours:8.2f}   "
              f"{kib_old:9.2f}   {kib_old / kib_ours:7.1f}x", flush=True)

        (sweep / "journal.jsonl").unlink()
        for i in range(args.shards):
            Journal(sweep / "shards" / f"shard-{i:04d}.jsonl").append_many(records[i::args.shards])
        t_ours, (_, ours) = timed(lambda: read_with_shards(sweep / "journal.jsonl"))
        t_old, old = timed(lambda: old_fold(sweep / "journal.jsonl"))
        row(f"fold {args.shards} shard journals (incremental vs per shard)", t_ours, t_old,
            records_digest(ours) == records_digest(old))

        rng = np.random.default_rng(1)
        for n in args.truth:
            x = np.round(rng.normal(size=n), 2)
            y = np.round(x + rng.normal(scale=0.5, size=n), 2)
            idx = bootstrap_indices(n, 2000, 0)
            t_ours, ours = timed(lambda: resample_statistics("kendall", x, y, idx))
            t_old, old = timed(lambda: pairwise_kendall(x, y, idx))
            row(f"Kendall on 2,000 resamples of {n} truth mixtures", t_ours, t_old,
                bool(np.allclose(ours, old, equal_nan=True, atol=1e-12)))

        Journal(sweep / "journal.jsonl").append_many(records)
        for shard in (sweep / "shards").glob("*.jsonl"):
            shard.unlink()
        truth = Path(tmp) / "truth"
        Journal(truth / "journal.jsonl").append_many(
            [JournalRecord("truth", r.mixture_id, r.weights, r.benchmark, r.score + 0.01 * (i % 7))
             for i, r in enumerate(records[: 50 * len(BENCHMARKS)])])
        from merge_proxy.results import make_report

        t_report, _ = timed(lambda: make_report(sweep, truth, Path(tmp) / "report"))
        print(f"\nmerge-proxy report ({args.mixtures:,} mixtures, 50 with truth): {t_report:.1f} s")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    main()
