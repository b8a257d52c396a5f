"""Recipes, mixture generators and resumable sweeps (in process, killed and resumed, submitit)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from merge_proxy import generators
from merge_proxy.errors import ConfigError
from merge_proxy.experts import local_fingerprint
from merge_proxy.journal import Journal
from merge_proxy.mixture import make_mixture
from merge_proxy.recipe import expand_mixtures, load_recipe

pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]

SCRIPTS = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "paper_mixtures.json"


# -------------------------------------------------------------------------------------- generators


def test_paper_sets_equal_the_reference_file():
    # The project's reference copy (../shared, beside every checkout and in CI); the package ships a
    # verbatim copy, which stands in where a checkout has no ../shared.
    source = REFERENCE if REFERENCE.is_file() else REPO_ROOT / "recipes" / "paper_mixtures.json"
    reference = json.loads(source.read_text())
    for set_name, count in (("two_domain", 7), ("three_domain", 21), ("four_domain", 20)):
        domains = reference[set_name]["domains"]
        ours = generators.paper(domains, set_name)
        assert len(ours) == count
        expected = [dict(zip(domains, m["weights"])) for m in reference[set_name]["mixtures"][:count]]
        assert [m.as_dict() for m in ours] == expected
    assert sum(len(generators.paper(reference[s]["domains"], s)) for s in generators.PAPER_SETS) == 48


def test_grids_sum_to_one_and_interior_grid_is_the_three_domain_set():
    for names, step, n in ((["a", "b"], 0.5, 3), (["a", "b", "c"], 0.25, 15), (["a", "b", "c", "d"], 0.25, 35)):
        mixtures = generators.grid(names, step)
        assert len(mixtures) == n
        assert all(math.isclose(sum(m.as_dict().values()), 1.0, abs_tol=1e-12) for m in mixtures)
        assert len({m.key() for m in mixtures}) == n
    names = ["counting", "general", "ocr"]
    interior = {m.key() for m in generators.grid(names, 0.125, interior=True)}
    assert interior == {m.key() for m in generators.paper(names, "three_domain")}
    assert {m.key() for m in generators.grid(["general", "ocr"], 0.125, interior=True)} == {
        m.key() for m in generators.paper(["general", "ocr"], "two_domain")}
    with pytest.raises(ConfigError, match="must divide 1 evenly"):
        generators.grid(names, 0.3)


@pytest.mark.parametrize("domains,step,interior", [(2, 0.125, False), (3, 0.1, False), (4, 0.125, True),
                                                    (5, 0.25, False), (5, 0.125, True)])
def test_grid_is_every_simplex_point_in_lexicographic_order(domains, step, interior):
    """Against the brute force: every tuple of multiples of the step summing to 1, filtered."""
    import itertools

    names = [f"d{i}" for i in range(domains)]
    k = round(1 / step)
    low = 1 if interior else 0
    expected = [c for c in itertools.product(range(k + 1), repeat=domains) if sum(c) == k and min(c) >= low]
    ours = generators.grid(names, step, interior=interior)
    assert [tuple(round(w * k) for _, w in m.weights) for m in ours] == expected
    assert generators.grid_size(domains, k, low) == len(expected)


def test_grid_too_large_is_refused_before_it_is_built(monkeypatch):
    names = [f"d{i}" for i in range(8)]
    assert len(generators.grid(names, 0.1)) == 19448  # below the limit

    def never(*args):
        raise AssertionError("the grid was enumerated before its size was checked")

    monkeypatch.setattr(generators, "_compositions", never)
    with pytest.raises(ConfigError, match=r"a grid with step 0.05 over 8 domains has 888,030 mixtures \(at most "
                                          r"100,000\).*use a coarser step, or sample the simplex with dirichlet"):
        generators.grid(names, 0.05)
    with pytest.raises(ConfigError, match=r"dirichlet n must be between 1 and 100,000 .*, not 1,000,000"):
        generators.dirichlet(names, 1_000_000)


def test_dirichlet_is_deterministic_rounded_and_sums_to_one():
    a = generators.dirichlet(["w", "x", "y", "z"], 20, alpha=1.0, seed=3)
    b = generators.dirichlet(["w", "x", "y", "z"], 20, alpha=1.0, seed=3)
    c = generators.dirichlet(["w", "x", "y", "z"], 20, alpha=1.0, seed=4)
    assert [m.key() for m in a] == [m.key() for m in b] != [m.key() for m in c]
    for m in a:
        assert math.isclose(sum(m.as_dict().values()), 1.0, abs_tol=1e-9)
        assert all(round(w, 4) == w for w in m.as_dict().values())


def test_dirichlet_rounding_never_goes_negative_and_linear_refuses_negative_weights():
    """A tiny alpha makes most draws round to 0: the rounding must not push one to -0.0001."""
    mixtures = generators.dirichlet(list("abcd"), 500, alpha=[1, 1, 1, 0.02], seed=0)
    assert min(w for m in mixtures for _, w in m.weights) == 0.0
    assert all(math.isclose(sum(m.as_dict().values()), 1.0, abs_tol=1e-9) for m in mixtures)
    from merge_proxy.mixture import make_mixture

    with pytest.raises(ConfigError, match=r"cannot be negative \('b' is -0.5\); use method task_arithmetic"):
        make_mixture({"a": 1.5, "b": -0.5}, ["a", "b"])
    assert make_mixture({"a": 1.5, "b": -0.5}, ["a", "b"], "task_arithmetic").weight("b") == -0.5


def test_shipped_recipes_rank_on_each_tasks_overall_metric():
    """mmstar and vmcbench declare a category first, MME two sums: the recipes say which metric to
    rank on, every named metric is one the task declares, and MME is brought to 0-1."""
    from lmms_eval.tasks import TaskManager

    from merge_proxy.sweep import _declared_metrics, load_tasks
    from merge_proxy.tasks import tasks_dir

    tasks = TaskManager(include_path=[str(tasks_dir())])  # what a sweep of these recipes indexes, built once
    for path in sorted((REPO_ROOT / "recipes").glob("*dom*.yaml")):
        load_tasks(load_recipe(path), tasks)  # checks every task and metric name
        benchmarks = {b.task: b for b in load_recipe(path).benchmarks}
        assert (benchmarks["mmstar"].metric, benchmarks["vmcbench"].metric) == ("average", "average"), path.name
        # the reference's tolerant metrics, from merge_proxy.tasks
        assert {t: benchmarks[t].metric for t in ("cv_bench_2d_count", "pope_soft", "chartqa_soft")} == {
            "cv_bench_2d_count": "count_acc_softer", "pope_soft": "pope_accuracy_soft",
            "chartqa_soft": "relaxed_overall_soft"}, path.name
        for b in benchmarks.values():
            assert set(b.metric_names) <= set(_declared_metrics(tasks, b.task)), (path.name, b.task)
        if "internvl" in path.name:
            assert "max_pixels" not in load_recipe(path).backend_args  # a Qwen argument InternVL drops


def test_the_demo_template_is_no_recipe_to_sweep_by_name():
    with pytest.raises(ConfigError, match=r"template of `merge-proxy demo`.*run `merge-proxy demo`"):
        load_recipe("demo")
    assert load_recipe("qwen2vl-2b-2dom").name == "qwen2vl-2b-2dom"  # the others load by name


def test_primary_metric_defaults_to_the_tasks_first_declared_metric():
    from merge_proxy.recipe import Benchmark
    from merge_proxy.sweep import _primary_metric

    reported = {"alias": "mmstar", "coarse perception,none": 0.71, "average,none": 0.42, "average_stderr,none": "N/A"}
    assert _primary_metric(reported, Benchmark("mmstar"), "average")[0] == 0.42
    assert _primary_metric(reported, Benchmark("mmstar", metric="coarse perception"), "average")[0] == 0.71
    with pytest.raises(ConfigError, match="has no metric 'avg'; it reports: average, coarse perception"):
        _primary_metric(reported, Benchmark("mmstar", metric="avg"))
    # MME as the reference scores it: (cognition + perception) / 2800; every metric is still journaled
    mme = {"alias": "mme", "mme_cognition_score,none": 310.0, "mme_perception_score,none": 1400.0}
    score, metrics = _primary_metric(mme, Benchmark("mme", metric=("mme_cognition_score", "mme_perception_score"),
                                                    max_score=2800), "mme_cognition_score")
    assert score == pytest.approx(1710 / 2800) and metrics == {"mme_cognition_score,none": 310.0,
                                                               "mme_perception_score,none": 1400.0}
    with pytest.raises(ConfigError, match="has no metric 'mme_total'"):
        _primary_metric(mme, Benchmark("mme", metric=("mme_cognition_score", "mme_total")))


def test_chat_only_backends_get_the_chat_proxy():
    from merge_proxy.lmms_model import MergeProxy, MergeProxyChat, proxy_class

    assert proxy_class("internvl_hf") is MergeProxyChat
    assert proxy_class("qwen2_vl") is MergeProxy and proxy_class(None) is MergeProxy


def test_relative_output_dir_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "output_dir": "runs/r"}, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert load_recipe(path).output_dir == tmp_path / "runs" / "r"
    path.write_text(yaml.safe_dump(GOOD, sort_keys=False))
    assert load_recipe(path).output_dir == tmp_path / "sweeps" / "r"


def test_shipped_recipes_load_with_the_papers_counts():
    counts = {"2dom": 7, "3dom": 21, "4dom": 20}
    recipes = sorted((REPO_ROOT / "recipes").glob("*dom*.yaml"))
    assert len(recipes) == 24  # 4 base models x 3 sets x (proxy, truth)
    for path in recipes:
        recipe = load_recipe(path)
        n, k = counts[path.stem.split("-")[2]], len(recipe.experts)
        assert len(recipe.benchmarks) == 14
        corners = {",".join(f"{e}={int(e == one)}" for e in recipe.experts) for one in recipe.experts}
        if recipe.mode == "truth":
            # the papers' mixtures, and each expert alone (the expert is the model trained on its domain only)
            assert len(recipe.truth) == n + k
            assert {make_mixture(t.weights, list(recipe.experts)).key() for t in recipe.truth} >= corners
        else:
            # the papers' mixtures plus the baselines: the uniform mixture (already in the 2-domain set) and
            # each expert alone
            keys = {m.key() for m in expand_mixtures(recipe, list(recipe.experts))}
            assert len(keys) == n + k + (k > 2)
            assert keys >= corners
        mme = next(b for b in recipe.benchmarks if b.task == "mme")
        # as the reference scores MME: (cognition + perception) / 2800
        assert (mme.metric_names, mme.max_score, mme.weight) == (("mme_cognition_score", "mme_perception_score"), 2800, 1)
        qwen_base = recipe.base.startswith("Qwen/Qwen2-VL-") and "Instruct" not in recipe.base
        assert (recipe.chat_template_from == "Qwen/Qwen2-VL-7B-Instruct") == qwen_base
        if path.name.startswith("internvl"):  # the reference's local conversion of the -Pretrained weights
            size = path.stem.split("-")[1].upper()
            assert recipe.base == f"checkpoints/base_models/InternVL3_5-{size}-Pretrained-HF"


def test_shipped_recipes_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("qwen2vl-2b-3dom.yaml", "qwen2vl-2b-3dom"):
        recipe = load_recipe(name)
        assert recipe.path == (REPO_ROOT / "recipes" / "qwen2vl-2b-3dom.yaml").resolve()
        assert recipe.output_dir == tmp_path / "sweeps" / "qwen2vl-2b-3dom"  # outputs stay out of the package
    with pytest.raises(ConfigError, match=r"recipe qwen2vl-9b\.yaml not found; give a file, or one of the shipped "
                                          r"recipes: internvl3\.5-2b-2dom"):
        load_recipe("qwen2vl-9b.yaml")


# -------------------------------------------------------------------------------------- recipe errors

GOOD = {
    "name": "t", "base": "ORG/base", "experts": {"a": "ORG/a", "b": "ORG/b"},
    "mixtures": [{"grid": {"step": 0.5}}], "benchmarks": [{"task": "synth_color"}],
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, r":\d+: bogus: unknown key; allowed: name, base"),
        ({"base": None}, r":\d+: base: required"),
        ({"mixtures": [{"gird": {"step": 0.5}}]}, r":\d+: mixtures.0: each item is one of grid:"),
        ({"benchmarks": [{"task": "x", "wieght": 2}]}, r":\d+: benchmarks.0.wieght: unknown key"),
        ({"benchmarks": [{"task": "x", "weight": "heavy"}]}, r":\d+: benchmarks.0.weight: must be a finite number"),
        ({"benchmarks": [{"task": "x", "weight": float("nan")}]}, r":\d+: benchmarks.0.weight: must be a finite number"),
        ({"benchmarks": [{"task": "x", "weight": -1}]}, r":\d+: benchmarks.0.weight: must be at least 0"),
        ({"benchmarks": [{"task": "x", "limit": "lots"}]}, r":\d+: benchmarks.0.limit: must be a number of samples"),
        ({"benchmarks": [{"task": "x", "limit": 1.0}]}, r":\d+: benchmarks.0.limit: .*lmms-eval reads 1.0 as one sample"),
        ({"benchmarks": [{"task": "x", "metric": ["a", 1]}]}, r":\d+: benchmarks.0.metric: must be a metric name"),
        ({"benchmarks": [{"task": "x", "max_score": 0}]}, r":\d+: benchmarks.0.max_score: must be above 0"),
        ({"scale": "big"}, r":\d+: scale: must be a finite number, not 'big'"),
        ({"aggregate": "geometric_mean"}, r":\d+: aggregate: only weighted_mean is supported"),
        ({"backend_args": ["a", "b"]}, r":\d+: backend_args: must be a mapping"),
        ({"chat_template_from": ["x"]}, r":\d+: chat_template_from: must be a model directory"),
        ({"executor": {"shards": "eight"}}, r":\d+: executor.shards: must be a whole number of jobs"),
        ({"mixtures": [{"grid": 0.25}]}, r":\d+: mixtures.0.grid: must be a mapping \(step, interior\)"),
        ({"mixtures": [{"grid": {"stp": 0.125}}]}, r":\d+: mixtures.0.grid.stp: unknown key; allowed: step, interior"),
        ({"mixtures": [{"grid": {"step": 0.5, "interior": "no"}}]}, r":\d+: mixtures.0.grid.interior: must be true or false"),
        ({"mixtures": [{"paper": {"set": "two_domain", "include_uniform": "false"}}]},
         r":\d+: mixtures.0.paper.include_uniform: must be true or false"),
        ({"mixtures": [{"dirichlet": {"alpha": 1}}]}, r":\d+: mixtures.0.dirichlet: needs n:"),
        ({"mixtures": [{"explicit": {"a": 1}}]}, r":\d+: mixtures.0.explicit: must be a list of mixtures"),
        ({"experts": {"query": {"domains": "ocr"}}}, r":\d+: experts.query: needs domains: \[a, b, ...\] \(a list"),
        ({"experts": {"query": {"domains": ["ok", "bad name"]}}}, r":\d+: experts.query.domains.1: invalid domain"),
        ({"mode": "truth", "truth": [{"weights": {"a": "half", "b": 0.5}, "model": "ORG/m"}]},
         r":\d+: truth.0.weights.a: must be a finite number, not 'half'"),
        ({"mode": "truth", "truth": [{"weights": 0.5, "model": "ORG/m"}]}, r":\d+: truth.0.weights: must be a mapping"),
        ({"method": "ties"}, r":\d+: method: must be one of linear, task_arithmetic"),
        ({"include_path": "no/such/dir"}, r":\d+: include_path: .* is not a directory"),
        ({"executor": {"type": "k8s"}}, r":\d+: executor.type: must be local, slurm or submitit-local"),
        ({"executor": {"gpus_per_node": -1}}, r":\d+: executor.gpus_per_node: must be a whole number of GPUs"),
        ({"executor": {"gpus_per_node": "two"}}, r":\d+: executor.gpus_per_node: must be a whole number of GPUs"),
        ({"experts": {"bad name": "ORG/x"}}, r":\d+: experts.bad name: invalid expert name"),
        ({"mode": "truth"}, r":\d+: truth: required"),
        ({"experts": {}}, r":\d+: experts: is empty"),
        ({"mixtures": []}, r":\d+: mixtures: is empty"),
        ({"benchmarks": []}, r":\d+: benchmarks: is empty"),
    ],
)
def test_recipe_errors_name_file_line_and_key(tmp_path, change, message):
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None or k == "base"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.") + message):
        load_recipe(path)


def test_unreadable_recipes_in_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b'name: x\nbase: "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 18\); save the recipe as UTF-8"):
        load_recipe(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nbenchmarks: [a, b\nbase: y\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:3: not valid YAML: [^\n]+$"):
        load_recipe(broken)
    with pytest.raises(ConfigError, match=r"is a directory; give the recipe's YAML file"):
        load_recipe(tmp_path)


def test_mixture_errors_point_at_the_generator(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "mixtures": [{"grid": {"step": 0.5}}, {"explicit": [{"a": 0.7, "b": 0.7}]}]},
                                   sort_keys=False))
    recipe = load_recipe(path)
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: mixtures\.1\.explicit\.0: linear merge weights must sum to 1"):
        expand_mixtures(recipe, ["a", "b"])
    path.write_text(yaml.safe_dump({**GOOD, "mixtures": [{"explicit": [{"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.7}]}]}))
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: mixtures\.0\.explicit\.1: linear merge weights"):
        expand_mixtures(load_recipe(path), ["a", "b"])
    path.write_text(yaml.safe_dump({**GOOD, "mixtures": [{"paper": "three_domain"}]}, sort_keys=False))
    with pytest.raises(ConfigError, match=r"mixes the domains counting, general, ocr.*name the experts after"):
        expand_mixtures(load_recipe(path), ["a", "b"])


# -------------------------------------------------------------------------------------- sweeps


def write_recipe(tmp_path: Path, tiny_vlm, domains, lora_experts, **extra) -> Path:
    data = {
        "name": "tiny", "base": str(tiny_vlm.path),
        "experts": {"a": str(lora_experts["a"]), "b": str(lora_experts["b"])},
        "mixtures": [{"grid": {"step": 0.25}}],
        "benchmarks": [{"task": domains.tasks["color"]}, {"task": domains.tasks["shape"], "weight": 2, "limit": 4}],
        "include_path": str(domains.lmms_eval_dir),
        "backend_args": {"device_map": "cpu", "device": "cpu"},
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep(recipe: Path, out: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "merge-proxy"), "sweep", str(recipe), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900, **kwargs)


def test_dry_run_checks_task_and_metric_names(tmp_path, tiny_vlm, domains, lora_experts):
    """A dry run names a task or metric typo as the real run would, before a GPU job is submitted."""
    color = domains.tasks["color"]
    ok = sweep(write_recipe(tmp_path, tiny_vlm, domains, lora_experts), tmp_path / "ok", "--dry-run")
    assert ok.returncode == 0 and "benchmarks: 2 task(s) and their metrics known to lmms-eval" in ok.stdout
    bad = write_recipe(tmp_path, tiny_vlm, domains, lora_experts,
                       benchmarks=[{"task": color, "metric": "count_acc_softer"}])
    proc = sweep(bad, tmp_path / "bad", "--dry-run")
    assert proc.returncode == 2 and f"benchmark {color} has no metric 'count_acc_softer'; its metrics: exact_match" \
        in proc.stderr
    assert not (tmp_path / "bad").exists()
    typo = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, backend="qwen2vl")
    proc = sweep(typo, tmp_path / "bad", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        f"{typo}: backend 'qwen2vl' is not an lmms-eval model; did you mean qwen2_vl or qwen_vl or qwen2_5_vl? "
        "`lmms-eval models` lists them")


def test_every_model_is_located_before_the_first_score_and_by_a_dry_run(tmp_path, tiny_vlm, domains, lora_experts):
    """A typo in the last truth model fails in seconds naming its role and the recipe, in a dry run
    and in a real run (before any score: nothing is written); a node without network still plans."""
    truth = [{"weights": {"a": 1.0, "b": 0.0}, "model": str(lora_experts["a"])},
             {"weights": {"a": 0.5, "b": 0.5}, "model": str(tmp_path / "saves" / "mixed-a5b5")}]
    recipe = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, mode="truth", truth=truth)
    for extra in (("--dry-run",), ()):
        proc = sweep(recipe, tmp_path / "out", *extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{recipe}: truth model of a=0.5,b=0.5: '{tmp_path}/saves/mixed-a5b5' is neither an existing directory " \
            "nor a Hub repo id" in proc.stderr.splitlines()[-1]
        assert not (tmp_path / "out").exists()

    hub_experts = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, experts={"a": "org/a", "b": "org/b@v2"})
    offline = sweep(hub_experts, tmp_path / "offline", "--dry-run", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert "models: 1 of 3 found; not checked (the Hub is unreachable): expert a, expert b" in offline.stdout
    ok = sweep(write_recipe(tmp_path, tiny_vlm, domains, lora_experts), tmp_path / "ok", "--dry-run")
    assert "models: 3 found, holding the files a run loads" in ok.stdout


def test_a_truth_recipe_of_full_checkpoints_needs_no_base(tmp_path, tiny_vlm, domains, lora_experts, full_experts):
    """Full truth checkpoints are loaded as they are: the base is neither located nor loaded."""
    truth = [{"weights": {"a": 0.5, "b": 0.5}, "model": str(full_experts["f1"])},
             {"weights": {"a": 0.25, "b": 0.75}, "model": str(full_experts["f2"])}]
    recipe = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, mode="truth", truth=truth,
                          base=str(tmp_path / "base-not-on-this-machine"))
    proc = sweep(recipe, tmp_path / "out", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "models: 2 found, holding the files a run loads" in proc.stdout


def _journal_of(out: Path, base: str, experts: dict[str, str], fingerprints: dict[str, str] | None = None,
                shown: dict[str, str] | None = None) -> None:
    """A journal of one score, as merge-proxy writes it (``fingerprints``), or as one written before
    fingerprints existed; ``shown`` puts an expert's recorded folder elsewhere (a moved project)."""
    from merge_proxy.journal import JournalRecord

    fp, shown = fingerprints or {}, shown or {}

    def entry(name: str, source: str) -> dict:
        where = shown.get(name, source)
        return {"name": name, "source": where, "pinned": where, **({"fingerprint": fp[name]} if fp else {})}

    record = JournalRecord("proxy", "a=0.5,b=0.5", {"a": 0.5, "b": 0.5}, "synth_color", 0.5,
                           base={k: v for k, v in entry("base", base).items() if k != "name"},
                           experts=[entry(n, s) for n, s in experts.items()])
    Journal(out / "journal.jsonl").append(record)
    (out / "recipe.yaml").write_text("# recipe A\n")


def test_a_journal_of_other_experts_is_not_resumed(tmp_path, tiny_vlm, domains, lora_experts):
    """Recipe B run into recipe A's directory (experts swapped, in another order, re-trained in place)
    would count A's scores as done and rank them with B's; refused before anything runs, recipe.yaml
    left as it was. A moved project (same files elsewhere) resumes."""
    from merge_proxy.experts import local_fingerprint

    a, b, base = str(lora_experts["a"]), str(lora_experts["b"]), str(tiny_vlm.path)
    now = {"a": local_fingerprint(a), "b": local_fingerprint(b), "base": local_fingerprint(base)}
    recipe = write_recipe(tmp_path, tiny_vlm, domains, lora_experts)

    def refused(out: Path, *message: str) -> None:
        for extra in (("--dry-run",), ()):
            proc = sweep(recipe, out, *extra)
            assert proc.returncode == 2, proc.stderr[-2000:]
            for m in message:
                assert m in proc.stderr, proc.stderr[-2000:]
        assert (out / "recipe.yaml").read_text() == "# recipe A\n"
        assert len((out / "journal.jsonl").read_text().splitlines()) == 1

    _journal_of(tmp_path / "swapped", base, {"a": b, "b": a})  # an older journal: no fingerprints
    refused(tmp_path / "swapped", f"holds proxy scores merged from other models (a: {b} -> {a}; b: {a} -> {b})",
            "pass a new --out (or output_dir), or move the old journal away")
    _journal_of(tmp_path / "order", base, {"b": b, "a": a}, fingerprints=now)
    refused(tmp_path / "order", "holds proxy scores of the experts in the order b, a, the recipe lists a, b")
    _journal_of(tmp_path / "retrained", base, {"a": a, "b": b}, fingerprints={**now, "a": "local:0123456789abcdef"})
    refused(tmp_path / "retrained", f"(a: {a} -> {a}; a local folder's weight files changed since: re-trained, "
                                    "or copied anew)")

    out = tmp_path / "moved"  # the same files, recorded under the folders they had before a move
    _journal_of(out, base, {"a": a, "b": b}, fingerprints=now, shown={"a": "/old/place/a", "b": "/old/place/b"})
    resumed = sweep(recipe, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len((out / "journal.jsonl").read_text().splitlines()) == 10  # the journal's score kept, 9 added

    # A run that fails its checks writes nothing: no new directory holding only a recipe.
    typo = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, benchmarks=[{"task": "synth_colr"}])
    proc = sweep(typo, tmp_path / "new")
    assert proc.returncode == 2 and "lmms-eval knows no task synth_colr" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_a_republished_hub_expert_is_refused_with_the_pin_that_resumes(tmp_path):
    """An unpinned Hub expert re-published since (a new commit): refused once the sources are pinned,
    naming the commit to pin for the journal's scores; the recipe's text alone cannot tell."""
    from merge_proxy.journal import JournalRecord
    from merge_proxy.resume import ModelId, check_models

    old, new = "1" * 40, "2" * 40
    record = JournalRecord("proxy", "a=1", {"a": 1.0}, "t", 0.5,
                           base={"source": "org/base", "revision": old, "pinned": f"org/base@{old}"},
                           experts=[{"name": "a", "source": "org/a", "revision": old, "pinned": f"org/a@{old}"}])
    base = ModelId.from_source(f"org/base@{old}")
    check_models([record], ModelId.from_source("org/base"), {"a": ModelId.from_source("org/a")}, tmp_path)
    check_models([record], base, {"a": ModelId.from_source(f"org/a@{old}")}, tmp_path)
    with pytest.raises(ConfigError, match=rf"\(a: org/a@{old} -> org/a@{new}; a new commit: to keep scoring the "
                                          rf"journal's, pin it in the recipe: a: org/a@{old}\)"):
        check_models([record], base, {"a": ModelId.from_source(f"org/a@{new}")}, tmp_path)
    with pytest.raises(ConfigError, match=r"\(a: org/a@1+ -> org/other\)"):
        check_models([record], base, {"a": ModelId.from_source("org/other")}, tmp_path)


def test_a_truth_journal_of_other_trained_models_is_not_resumed(tmp_path):
    from merge_proxy.journal import JournalRecord
    from merge_proxy.resume import ModelId, check_truth_models

    mix = make_mixture("a=0.5,b=0.5", ["a", "b"])
    record = JournalRecord("truth", mix.key(), mix.as_dict(), "t", 0.5, model="org/mixed-a5b5@" + "1" * 40)

    def recipe_trains(source: str) -> dict[str, ModelId]:
        return {mix.key(): ModelId.from_source(source)}

    check_truth_models([record], recipe_trains("org/mixed-a5b5@main"), tmp_path)  # a branch: not pinned yet
    with pytest.raises(ConfigError, match=r"holds truth scores of a=0.5,b=0.5 from org/mixed-a5b5@1+, the recipe "
                                          r"trains it as org/mixed-a5b5-v2: pass a new --out"):
        check_truth_models([record], recipe_trains("org/mixed-a5b5-v2"), tmp_path)
    # another commit (pinned, or as the run resolves it): the pin that keeps the journal's
    with pytest.raises(ConfigError, match=r"from org/mixed-a5b5@1+, the recipe trains it as org/mixed-a5b5@2+; a new "
                                          r"commit: to keep scoring the journal's, pin it in the recipe: model: "
                                          r"org/mixed-a5b5@1+:"):
        check_truth_models([record], recipe_trains("org/mixed-a5b5@" + "2" * 40), tmp_path)
    # a moved project: the journal's folder is gone, the recipe's is here
    moved = JournalRecord("truth", mix.key(), mix.as_dict(), "t", 0.5, model="/old/place/mixed-a5b5")
    check_truth_models([moved], recipe_trains(str(tmp_path)), tmp_path)


def test_a_truth_model_re_trained_into_its_folder_is_not_resumed(tmp_path):
    from merge_proxy.experts import local_fingerprint
    from merge_proxy.journal import JournalRecord
    from merge_proxy.resume import ModelId, check_truth_models

    mix = make_mixture("a=0.5,b=0.5", ["a", "b"])
    folder = tmp_path / "saves" / "mixed"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"first run")
    record = JournalRecord("truth", mix.key(), mix.as_dict(), "t", 0.5, model=str(folder),
                           model_fingerprint=local_fingerprint(folder))
    check_truth_models([record], {mix.key(): ModelId.from_source(str(folder))}, tmp_path)
    moved = tmp_path / "elsewhere"
    folder.rename(moved)  # a moved project keeps its files' times: the same model
    check_truth_models([record], {mix.key(): ModelId.from_source(str(moved))}, tmp_path)
    moved.rename(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"second run, another seed")
    with pytest.raises(ConfigError, match=r"holds truth scores of a=0.5,b=0.5 from .*saves/mixed, the recipe trains "
                                          r"it as .*saves/mixed; its weight files changed since: re-trained, or "
                                          r"copied anew: pass a new --out"):
        check_truth_models([record], {mix.key(): ModelId.from_source(str(folder))}, tmp_path)
    old = JournalRecord("truth", mix.key(), mix.as_dict(), "t", 0.5, model=str(folder))  # before the field
    check_truth_models([old], {mix.key(): ModelId.from_source(str(folder))}, tmp_path)


def shard_processes(out: Path) -> list[int]:
    """Live processes that belong to the sweep's submitit jobs (their command line names its folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out / "submitit") in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def comparable(path: Path) -> dict:
    return {r.key: (r.score, r.metrics, r.weights, r.mode) for r in Journal(path).records()}


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_journal_and_submitit_matches(tmp_path, tiny_vlm, domains, lora_experts):
    # chat_template_from: the base's own template (same answers), so the shards' pinned copy is exercised
    recipe = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, chat_template_from=str(tiny_vlm.path))
    full = sweep(recipe, tmp_path / "full", "--shards", "2")
    assert full.returncode == 0, full.stderr[-3000:]
    assert "executor local scores in this process, one mixture after another: 2 shards ignored; " \
        "--executor submitit-local runs them as processes, one per GPU" in full.stderr
    reference = comparable(tmp_path / "full" / "journal.jsonl")
    assert len(reference) == 5 * 2
    assert len({v[0] for v in reference.values()}) >= 1

    # Kill a second sweep once it has written some records, then resume it.
    out = tmp_path / "killed"
    proc = subprocess.Popen([str(SCRIPTS / "merge-proxy"), "sweep", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not journal.is_file() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(journal.read_text().splitlines())
    assert 3 <= partial < 10
    with journal.open("a") as fh:  # a torn line, as a crash inside a write would leave
        fh.write('{"schema": "merge-proxy/journal", "mixture_id": "a=0')
    dry = sweep(recipe, out, "--dry-run")
    assert f"{partial} of 10 scores done" in dry.stdout
    resumed = sweep(recipe, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable(journal) == reference
    assert all(line.endswith("}") for line in journal.read_text().splitlines())
    again = sweep(recipe, out, "--dry-run")
    assert "10 of 10 scores done" in again.stdout

    # SIGTERM to the submitter (its own SLURM time limit, scancel) cancels the shard jobs it waits for;
    # what they journaled is gathered, and the rerun submits only the rest.
    out = tmp_path / "submitit"
    # Started with SIGINT ignored, as `merge-proxy sweep ... &` in a script is: submitit cancels local jobs
    # with SIGINT, so the shards must not inherit that.
    proc = subprocess.Popen([str(SCRIPTS / "merge-proxy"), "sweep", str(recipe), "--out", str(out),
                             "--executor", "submitit-local", "--shards", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not any(p.read_text().strip() for p in out.glob("shards/*.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert re.search(r"interrupted: cancelled [12] shard job\(s\) \(\d+(, \d+)?\); the scores they journaled are kept",
                     stderr), stderr[-3000:]
    assert "merge-proxy sweep: terminated (SIGTERM)" in stderr.splitlines()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and shard_processes(out):
        time.sleep(0.2)
    assert not shard_processes(out)
    gathered = comparable(out / "journal.jsonl")
    assert 1 <= len(gathered) < 10 and all(reference[k] == v for k, v in gathered.items())
    first = {p.name for p in out.glob("shards/*.jsonl")}

    # On a GPU node each local shard gets its own GPU (fake ids here: this machine has none).
    shards = sweep(recipe, out, "--executor", "submitit-local", "--shards", "2",
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"})
    assert shards.returncode == 0, shards.stderr[-3000:]
    assert "local shards run without a time limit (executor timeout_min sets one)" in shards.stderr
    assert comparable(out / "journal.jsonl") == reference
    second = {p.name for p in out.glob("shards/*.jsonl")} - first
    assert 1 <= len(second) <= 2  # the rerun's shards write new files, never an earlier job's
    assert len({name.rsplit("-", 1)[0] for name in first}) == len({name.rsplit("-", 1)[0] for name in second}) == 1
    logs = "".join(p.read_text() for p in (out / "submitit").glob("*_log.err"))
    for name in second:
        index = int(name.removesuffix(".jsonl").rsplit("-", 1)[1])
        assert re.search(rf"shard {re.escape(name.removesuffix('.jsonl'))}: \d+ mixture\(s\), "
                         rf"CUDA_VISIBLE_DEVICES={'35'[index]}\n", logs), logs[-3000:]

    record = Journal(journal).records()[0]
    assert record.mode == "proxy" and record.lmms_eval_version == "0.7.3"
    assert [e["name"] for e in record.experts] == ["a", "b"]
    assert record.base["pinned"] == str(tiny_vlm.path)


@pytest.mark.slow
def test_truth_mode_scores_trained_models_into_the_same_schema(tmp_path, tiny_vlm, domains, lora_experts, full_experts):
    recipe = write_recipe(
        tmp_path, tiny_vlm, domains, lora_experts, mode="truth", mixtures=None,
        truth=[{"weights": {"a": 0.25, "b": 0.75}, "model": str(lora_experts["c"])},
               {"weights": {"a": 0.5, "b": 0.5}, "model": str(full_experts["f1"])}],
        chat_template_from=str(tiny_vlm.path),  # both kinds of truth model take it (tests/test_chat_template.py)
    )
    data = yaml.safe_load(recipe.read_text())
    data.pop("mixtures")
    recipe.write_text(yaml.safe_dump(data))
    proc = sweep(recipe, tmp_path / "truth")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = Journal(tmp_path / "truth" / "journal.jsonl").records()
    assert {(r.mixture_id, r.benchmark) for r in records} == {
        (m, t) for m in ("a=0.25,b=0.75", "a=0.5,b=0.5") for t in (domains.tasks["color"], domains.tasks["shape"])}
    assert {r.mode for r in records} == {"truth"}
    assert {r.model for r in records} == {str(lora_experts["c"]), str(full_experts["f1"])}
    assert {(r.model, r.model_fingerprint) for r in records} == {
        (str(p), local_fingerprint(p)) for p in (lora_experts["c"], full_experts["f1"])}
    assert {r.settings["chat_template_from"] for r in records} == {str(tiny_vlm.path)}


@pytest.mark.slow
def test_a_truth_model_re_published_mid_mixture_is_refused_before_scoring(tmp_path, hub_emulator, hub_api, tiny_vlm,
                                                                          domains, lora_experts):
    """A mixture half scored on a Hub truth model whose main has moved since: refused once the run
    pins the commit (the recipe's text cannot tell), before any model loads, naming the pin that
    resumes; nothing appended."""
    hub_api.create_repo("tester/mixed")
    first = hub_api.upload_folder(repo_id="tester/mixed", folder_path=lora_experts["c"],
                                  ignore_patterns=["README.md"]).oid
    hub_api.upload_file(path_or_fileobj=b"retrained", path_in_repo="NOTE.txt", repo_id="tester/mixed")
    recipe = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, mode="truth",
                          truth=[{"weights": {"a": 0.5, "b": 0.5}, "model": "tester/mixed"}])
    data = yaml.safe_load(recipe.read_text())
    data.pop("mixtures")
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "truth"
    from merge_proxy.journal import JournalRecord

    Journal(out / "journal.jsonl").append(JournalRecord(
        "truth", "a=0.5,b=0.5", {"a": 0.5, "b": 0.5}, domains.tasks["color"], 0.5, model=f"tester/mixed@{first}"))
    before = (out / "journal.jsonl").read_bytes()
    proc = sweep(recipe, out, env={**os.environ, **hub_emulator.client_env(hf_home=tmp_path / "hf-home")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"holds truth scores of a=0.5,b=0.5 from tester/mixed@{first}, the recipe trains it as tester/mixed@"
            in proc.stderr)
    assert f"a new commit: to keep scoring the journal's, pin it in the recipe: model: tester/mixed@{first}" \
        in proc.stderr
    assert (out / "journal.jsonl").read_bytes() == before and not (out / "recipe.yaml").exists()
    # the advice: pin the journal's commit; the mixture is finished on that commit
    data["truth"][0]["model"] = f"tester/mixed@{first}"
    recipe.write_text(yaml.safe_dump(data))
    pinned = sweep(recipe, out, env={**os.environ, **hub_emulator.client_env(hf_home=tmp_path / "hf-home")})
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    records = Journal(out / "journal.jsonl").records()
    assert [(r.benchmark, r.model) for r in records] == [
        (domains.tasks["color"], f"tester/mixed@{first}"), (domains.tasks["shape"], f"tester/mixed@{first}")]


def journal_record(mode: str, mixture: str, benchmark: str, score: float, settings: dict | None = None):
    from merge_proxy.journal import JournalRecord

    weights = dict((k, float(v)) for k, v in (kv.split("=") for kv in mixture.split(",")))
    return JournalRecord(mode=mode, mixture_id=mixture, weights=weights, benchmark=benchmark, score=score,
                         settings=settings or {})


def test_resume_counts_only_finite_scores_of_its_own_mode_and_settings(tmp_path, tiny_vlm, domains, lora_experts):
    from merge_proxy.resume import settings
    from merge_proxy.sweep import plan

    recipe_path = write_recipe(tmp_path, tiny_vlm, domains, lora_experts)
    recipe = load_recipe(recipe_path)
    color, shape = (b.task for b in recipe.benchmarks)
    same = {b.task: settings(recipe, b) for b in recipe.benchmarks}
    out = tmp_path / "out"
    Journal(out / "journal.jsonl").append_many([
        journal_record("proxy", "a=0,b=1", color, 0.5, same[color]),
        journal_record("proxy", "a=0,b=1", shape, float("nan"), same[shape]),  # retried, not done
        journal_record("truth", "a=0.25,b=0.75", color, 0.5),  # another mode: not the proxy's
    ])
    p = plan(recipe_path, out)
    assert (p.done, p.total) == (1, 10)
    # A shard's records count too, read where they are: planning (a dry run, a shard job) writes nothing.
    Journal(out / "shards" / "shard-0000.jsonl").append(journal_record("proxy", "a=0,b=1", shape, 0.7, same[shape]))
    before = (out / "journal.jsonl").read_bytes()
    assert plan(recipe_path, out).done == 2
    assert (out / "journal.jsonl").read_bytes() == before
    # A smoke run with limit 5 into the same directory, then the real recipe: refused, not mixed.
    Journal(out / "journal.jsonl").append(journal_record("proxy", "a=1,b=0", color, 0.5, {**same[color], "limit": 5}))
    with pytest.raises(ConfigError, match=rf"holds {color} scores made with other settings \(limit: 5 -> None\).*new --out"):
        plan(recipe_path, out)
    # Scores post-processed before the sweep used lmms-eval's command-line defaults are not resumed into.
    old = tmp_path / "old"
    before_cli = {k: v for k, v in same[color].items() if k != "postprocess"}
    Journal(old / "journal.jsonl").append(journal_record("proxy", "a=0,b=1", color, 0.5, before_cli))
    with pytest.raises(ConfigError, match=r"other settings \(postprocess: None -> 'lmms-eval-cli'\)"):
        plan(recipe_path, old)
    # Settings added later (max_score, chat_template_from) are stored only when used: records written
    # before them still resume; using one on a journal scored without it is a change.
    assert "max_score" not in same[color] and "chat_template_from" not in same[color]
    resumed = tmp_path / "resumed"
    Journal(resumed / "journal.jsonl").append(journal_record("proxy", "a=0,b=1", color, 0.5, same[color]))
    assert plan(recipe_path, resumed).done == 1
    (tmp_path / "later").mkdir()
    later = write_recipe(tmp_path / "later", tiny_vlm, domains, lora_experts, chat_template_from=str(tiny_vlm.path))
    with pytest.raises(ConfigError, match=rf"\(chat_template_from: None -> '{tiny_vlm.path}'\)"):
        plan(later, resumed)


def test_truth_mixtures_are_keyed_in_the_experts_order(tmp_path, tiny_vlm, domains, lora_experts):
    from merge_proxy.sweep import candidate_items

    truth = [{"weights": {"b": 0.75, "a": 0.25}, "model": str(lora_experts["a"])}]
    path = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, mode="truth", truth=truth)
    [item] = candidate_items(load_recipe(path), ["a", "b"])
    assert item.mixture.key() == "a=0.25,b=0.75"
    bad = write_recipe(tmp_path, tiny_vlm, domains, lora_experts, mode="truth",
                       truth=[{"weights": {"a": 0.25, "c": 0.75}, "model": str(lora_experts["a"])}])
    with pytest.raises(ConfigError, match=r"truth\[0\].*unknown expert\(s\) 'c'"):
        candidate_items(load_recipe(bad), ["a", "b"])


def test_a_shards_retry_of_a_non_finite_score_reaches_the_journal_and_the_report(tmp_path):
    """A NaN in journal.jsonl must not shadow the finite score a shard journaled later (the sweep counts
    that key as done), and a shard's NaN must not shadow a finite score."""
    from merge_proxy.analysis import Scores
    from merge_proxy.results import locate, read_results
    from merge_proxy.sweep import gather

    Journal(tmp_path / "journal.jsonl").append_many([
        journal_record("proxy", "a=0.5,b=0.5", "t", float("nan")), journal_record("proxy", "a=1,b=0", "t", 0.2)])
    Journal(tmp_path / "shards" / "shard-x-0000.jsonl").append_many([
        journal_record("proxy", "a=0.5,b=0.5", "t", 0.7), journal_record("proxy", "a=1,b=0", "t", float("nan"))])
    expected = {"a=0.5,b=0.5": {"t": 0.7}, "a=1,b=0": {"t": 0.2}}
    assert Scores.from_records(read_results(locate(tmp_path))).scores == expected
    gather(tmp_path)
    assert Scores.from_records(Journal(tmp_path / "journal.jsonl").records()).scores == expected
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    gather(tmp_path)
    assert (tmp_path / "journal.jsonl").read_text().splitlines() == lines  # gathering twice adds nothing


@pytest.mark.skipif(bool(__import__("shutil").which("srun")), reason="this machine is a SLURM node")
def test_slurm_executor_off_a_cluster_says_so_in_one_line(tmp_path, tiny_vlm, domains, lora_experts):
    recipe = write_recipe(tmp_path, tiny_vlm, domains, lora_experts)
    proc = sweep(recipe, tmp_path / "out", "--executor", "slurm")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot submit SLURM jobs from this machine" in proc.stderr and "--executor local" in proc.stderr


def test_local_shards_get_their_own_gpus(monkeypatch):
    from merge_proxy.executors import local_gpus, shard_gpus

    # read as CUDA reads it: up to the first empty/negative entry, nothing when an index repeats
    for visible, gpus in (("0,1", ["0", "1"]), ("-1", []), ("", []), ("0,,1", ["0"]), ("1,1", []), ("2,-1,3", ["2"])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert local_gpus() == gpus, visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,GPU-8f1c,MIG-4a2b")
    assert local_gpus() == ["2", "3", "GPU-8f1c", "MIG-4a2b"]
    gpus = [str(i) for i in range(4)]
    assert shard_gpus(4, 1, gpus) == [("0",), ("1",), ("2",), ("3",)]
    assert shard_gpus(6, 1, gpus) == [("0",), ("1",), ("2",), ("3",), ("0",), ("1",)]  # more shards: shared
    assert shard_gpus(3, 2, gpus) == [("0", "1"), ("2", "3"), ("0", "1")]
    assert shard_gpus(2, 0, []) == [(), ()]  # no GPU: the CPU, as before
    with pytest.raises(ConfigError, match=r"gpus_per_node: 2, but this machine shows 1 GPU\(s\) \(7\)"):
        shard_gpus(2, 2, ["7"])
    from merge_proxy.executors import submit_local

    with pytest.raises(ConfigError, match=r"names GPUs by UUID \(2, 3, GPU-8f1c, MIG-4a2b\); submitit-local places"):
        submit_local(None, print, ([],), None, [])  # refused before anything is submitted
    submit_local(None, print, ([],), 0, [])  # gpus_per_node: 0 runs on the CPU, whatever the GPUs are named


def _embedded_image_tasks(color_task_dir: Path, root: Path) -> Path:
    """Two copies of a domain's task with the images embedded as a datasets Image column (as Hub
    benchmarks store them) and a metric that is 1 when process_results sees the image: one as most
    tasks are, one declaring ``process_results_use_image``."""
    import datasets
    from PIL import Image

    rows = [json.loads(line) for line in (color_task_dir / "data.jsonl").read_text().splitlines() if line.strip()]
    images = []
    for r in rows:
        with Image.open(color_task_dir / r["image"]) as im:
            images.append(im.convert("RGB"))
    table = datasets.Dataset.from_dict(
        {"question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows], "image": images},
        features=datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                    "image": datasets.Image()}))
    for name, keep in (("media_stripped", False), ("media_kept", True)):
        folder = root / name
        folder.mkdir(parents=True)
        table.to_parquet(str(folder / "test.parquet"))
        (folder / "utils.py").write_text(
            "def doc_to_visual(doc):\n    return [doc['image'].convert('RGB')]\n\n\n"
            "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n    return doc['question']\n\n\n"
            "def process_results(doc, results, **kwargs):\n    return {'saw_image': float('image' in doc)}\n")
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({
            "task": name, "dataset_path": "parquet", "dataset_kwargs": {"data_files": {"test": "test.parquet"}},
            "test_split": "test", "output_type": "generate_until", "doc_to_target": "answer",
            "generation_kwargs": {"max_new_tokens": 2, "do_sample": False},
            "metric_list": [{"metric": "saw_image", "aggregation": "mean", "higher_is_better": True}],
            "process_results_use_image": keep, "metadata": {"version": 0.0},
        }).replace("doc_to_target", "doc_to_visual: !function utils.doc_to_visual\n"
                   "doc_to_text: !function utils.doc_to_text\nprocess_results: !function utils.process_results\n"
                   "doc_to_target"))
    return root


def test_sweep_post_processes_documents_as_the_lmms_eval_command_line(tmp_path, tiny_vlm, domains, lora_experts):
    """lmms-eval's command line post-processes documents without their images unless a task asks for
    them (--process_with_media off); simple_evaluate without cli_args decodes every image again. The
    sweep scores as the command line does: the stripped task never sees its image, the other does."""
    from merge_proxy.sweep import Evaluator

    import shutil

    include = _embedded_image_tasks(domains.lmms_eval_dir / "color", tmp_path / "tasks")
    shutil.copytree(domains.lmms_eval_dir / "color", include / "color")
    recipe = load_recipe(write_recipe(tmp_path, tiny_vlm, domains, lora_experts,
                                      benchmarks=[{"task": "media_stripped", "limit": 2}, {"task": "media_kept", "limit": 2}],
                                      include_path=str(include)), output_dir=tmp_path / "out")
    evaluator = Evaluator(recipe, dict(recipe.experts))
    model = evaluator.proxy(make_mixture("a=0.5,b=0.5", ["a", "b"]))
    stripped, kept = (evaluator.score(model, b)[0] for b in recipe.benchmarks)
    assert (stripped, kept) == (0.0, 1.0)

    # The command line also strips reasoning blocks before scoring: a model answering
    # "<think>...</think>red" scores on "red" (the fraction of red answers), not 0.
    from lmms_eval.api.model import lmms

    class Says(lmms):
        def generate_until(self, requests):
            return ["<think>it looks purple</think>red" for _ in requests]

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    from merge_proxy.recipe import Benchmark

    answers = [json.loads(line)["answer"] for line in (domains.lmms_eval_dir / "color" / "data.jsonl").read_text().splitlines()]
    assert "red" in answers and len(set(answers)) > 1
    assert evaluator.score(Says(), Benchmark(domains.tasks["color"]))[0] == answers.count("red") / len(answers)
    # side files of tasks (ocrbench's breakdown) go under the sweep's directory, not the working directory
    assert evaluator._cli_args.output_path == str(tmp_path / "out" / "lmms_eval")



def test_a_failed_shard_is_reported_by_its_own_error_not_its_log_paths(tmp_path):
    """submitit's error ends with the log paths; the submitter's one line names the job's own error,
    and asks for a fix before a rerun when the error is one of ours (a rerun alone fails the same)."""
    from merge_proxy import executors
    from merge_proxy.experts import check_source

    executor = executors.local_executor(tmp_path, 5)
    jobs = [executor.submit(check_source, "/saves/x", "truth model of a=0.5,b=0.5", for_base=True),
            executor.submit(int, "x")]
    ours, crash = executors.wait(jobs)
    assert str(ours) == (f"job {jobs[0].job_id}: truth model of a=0.5,b=0.5: '/saves/x' is neither an existing "
                         "directory nor a Hub repo id (ORG/NAME[@REV])") and ours.needs_fix
    assert str(crash) == f"job {jobs[1].job_id}: ValueError: invalid literal for int() with base 10: 'x'"
    assert not crash.needs_fix
