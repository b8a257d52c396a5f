"""``merge-proxy sweep RECIPE.yaml``: score every mixture's proxy on every benchmark, resumably."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="score mixtures with merged proxies (or trained models: mode truth) into a resumable journal",
        description="One base load, an in-place re-merge per mixture, lmms-eval in process; results are appended "
        "to DIR/journal.jsonl as they come, and a rerun skips what is there.",
    )
    p.add_argument("recipe", help="a recipe YAML file, or the name of a shipped recipe (e.g. qwen2vl-2b-3dom; "
                   "list them with python -c 'import merge_proxy.resources as r; print(r.list_recipes())')")
    p.add_argument("--out", help="output directory (default: the recipe's output_dir, else sweeps/RECIPE; "
                   "relative to the working directory)")
    p.add_argument("--dry-run", action="store_true", help="list the work left, run nothing")
    p.add_argument("--executor", choices=("local", "slurm", "submitit-local"), help="override the recipe's executor")
    p.add_argument("--shards", type=_positive, help="number of jobs for slurm/submitit-local (default: the recipe's)")
    # Not SIGHUP: Ctrl-C and SIGTERM to the submitter cancel the SLURM jobs it waits for, and a dropped
    # ssh session must not (the jobs keep running; a rerun gathers them). Journal lines are atomic.
    p.set_defaults(handler=run, unwind_on_sigterm=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} jobs: give at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    from merge_proxy.sweep import plan, run_sweep

    if args.dry_run:
        p = plan(args.recipe, args.out)
        print(f"sweep {p.recipe.name} ({p.recipe.mode}): {p.done} of {p.total} scores done; "
              f"journal: {p.recipe.output_dir / 'journal.jsonl'}")
        print("experts: " + ", ".join(f"{n}={s}" for n, s in p.sources.items()))
        for item in p.items:
            label = f"  {item.mixture.key()}" + (f"  [{item.model}]" if item.model else "")
            print(f"{label}: {', '.join(b.task for b in item.benchmarks)}")
        if p.items:
            print(_check_models(p))
        print(_check_tasks(p.recipe))
        return 0
    journal = run_sweep(args.recipe, args.out, executor=args.executor, shards=args.shards)
    print(f"journal: {journal.path}")  # not re-read to count it: GBs for a million records
    return 0


def _check_models(p) -> str:
    """Locate every model the work left loads, as a real run does first (a request per Hub model,
    nothing downloaded); a node without network still gets the plan, and says what it left unchecked."""
    from merge_proxy.sweep import pin_models

    pinned = pin_models(p.recipe, p.sources, p.items, p.records, offline_ok=True)
    found = len(pinned.checked)
    if pinned.unchecked:
        return (f"models: {found - len(pinned.unchecked)} of {found} found; not checked (the Hub is unreachable): "
                + ", ".join(pinned.unchecked))
    return f"models: {found} found, holding the files a run loads"


def _check_tasks(recipe) -> str:
    """Check the benchmarks' task and metric names and the backend's as a real run does first (a few
    seconds), where lmms-eval is installed: a login node without it still gets the plan."""
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is None:
        return "benchmarks: not checked (lmms-eval is not installed here)"
    from merge_proxy.sweep import check_backend, load_tasks

    load_tasks(recipe)
    check_backend(recipe)
    return f"benchmarks: {len(recipe.benchmarks)} task(s) and their metrics known to lmms-eval"
