"""lmms-eval tasks shipped with merge-proxy: three benchmarks scored as the reference protocol scores them.

The reference (Berasi et al.) evaluates with a patched lmms-eval whose chartqa, pope and cv_bench tasks
report extra, more tolerant metrics, and its results tables use those: ``relaxed_overall_soft`` (a
trailing "." dropped), ``pope_accuracy_soft`` (the first word, ".:," stripped), ``count_acc_softer``
(CV-Bench 2D's Count questions only; an answer equal to an option's text counts as that option).
Stock lmms-eval 0.7.3 has none of them, so a sweep scoring the stock metrics ranks mixtures by how
exactly a model formats "Yes." rather than by what it answers. These tasks reuse the stock tasks'
datasets, prompts and generation settings and add the reference's metrics; the shipped paper recipes
use them. Sweeps find them by themselves; on the lmms-eval command line pass
``--include_path "$(python -m merge_proxy.tasks)"``.

(mmstar needs no such task: lmms-eval 0.7.3's own answer extraction already accepts "Answer: A".)
"""

from __future__ import annotations

from pathlib import Path

#: The names of the tasks defined here.
TASKS = ("chartqa_soft", "pope_soft", "cv_bench_2d_count")


def tasks_dir() -> Path:
    """The directory to give lmms-eval as ``include_path`` (a real directory: lmms-eval walks it)."""
    return Path(__file__).resolve().parent
