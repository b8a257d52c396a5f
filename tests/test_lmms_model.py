"""`--model merge_proxy` through the real lmms-eval CLI and simple_evaluate, on the tiny model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from merge_proxy.testing.lmms import responses, run_lmms_eval

SCRIPTS = Path(sys.executable).parent
CPU = "device_map=cpu,device=cpu"

pytestmark = pytest.mark.slow


def export(tmp_path: Path, base: Path, experts: dict[str, Path], weights: str) -> Path:
    out = tmp_path / f"merged-{weights.replace('=', '').replace(',', '_')}"
    args = ["--base", str(base)]
    for name, path in experts.items():
        args += ["--expert", f"{name}={path}"]
    proc = subprocess.run([str(SCRIPTS / "merge-proxy"), "merge", *args, "--weights", weights, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_cli_equals_backend_on_the_exported_checkpoint(tmp_path, tiny_vlm, domains, lora_experts):
    """merge_proxy with weights w answers exactly as qwen2_vl on `merge-proxy merge`'s output for w."""
    experts = {"a": lora_experts["a"], "b": lora_experts["b"]}
    tasks = [domains.tasks["color"], domains.tasks["shape"]]
    proxy = run_lmms_eval(
        "merge_proxy",
        f"pretrained={tiny_vlm.path},experts=a={experts['a']};b={experts['b']},weights=a=0.3;b=0.7,{CPU}",
        tasks, tmp_path / "proxy", include_path=domains.lmms_eval_dir,
    )
    merged = export(tmp_path, tiny_vlm.path, experts, "a=0.3,b=0.7")
    stock = run_lmms_eval("qwen2_vl", f"pretrained={merged},{CPU}", tasks, tmp_path / "stock",
                          include_path=domains.lmms_eval_dir)
    base = run_lmms_eval("qwen2_vl", f"pretrained={tiny_vlm.path},{CPU}", tasks, tmp_path / "base",
                         include_path=domains.lmms_eval_dir)
    for task in tasks:
        assert proxy.responses(task) == stock.responses(task)
        assert len(proxy.responses(task)) == domains.eval_size
    # The merge matters: the base answers differently.
    assert any(proxy.responses(t) != base.responses(t) for t in tasks)
    assert proxy.results["config"]["model"] == "merge_proxy"


def test_one_instance_remerged_across_mixtures_and_cached(tmp_path, tiny_vlm, domains, lora_experts):
    """simple_evaluate on one instance: 3 mixtures by remerge, each equal to its own exported
    checkpoint; the response cache answers a re-run entirely and never mixes mixtures."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from merge_proxy.lmms_model import MergeProxy

    task = domains.tasks["color"]
    manager = TaskManager(include_path=str(domains.lmms_eval_dir))
    model = MergeProxy(
        pretrained=str(tiny_vlm.path), experts=";".join(f"{n}={p}" for n, p in lora_experts.items()),
        weights="a=1;b=0;c=0", device_map="cpu", device="cpu",
    )
    calls: list[int] = []
    backend_generate = model.backend.generate_until

    def counting_generate(requests):
        calls.append(len(requests))
        return backend_generate(requests)

    model.backend.generate_until = counting_generate

    def evaluate(cache: Path | None) -> dict[int, str]:
        out = simple_evaluate(model=model, tasks=[task], task_manager=manager, log_samples=True,
                              use_cache=str(cache) if cache else None, bootstrap_iters=0)
        return responses(out["samples"][task])

    mixtures = ["a=0.2;b=0.3;c=0.5", "a=0.6;b=0.1;c=0.3", "a=0;b=0;c=1"]
    seen = []
    cache = tmp_path / "cache"
    for weights in mixtures:
        model.remerge(weights)
        calls.clear()
        first = evaluate(cache)
        assert sum(calls) == domains.eval_size  # a new mixture is never answered from another's cache
        calls.clear()
        again = evaluate(cache)
        assert sum(calls) == 0  # re-running a mixture is answered entirely from the cache
        assert again == first
        stock_dir = export(tmp_path, tiny_vlm.path, lora_experts, weights.replace(";", ","))
        stock = simple_evaluate(model="qwen2_vl", model_args=f"pretrained={stock_dir},{CPU}", tasks=[task],
                                task_manager=manager, log_samples=True, bootstrap_iters=0)
        assert first == responses(stock["samples"][task])
        seen.append(first)
    assert len({tuple(sorted(s.items())) for s in seen}) > 1
    assert "weights=a=0,b=0,c=1" in repr(model) and str(tiny_vlm.path) in repr(model)


BAD_ARGUMENTS = [
    ("experts=a={a},weights=a=1", "missing pretrained="),
    ("pretrained={base},experts=a={a}", "missing weights="),
    ("pretrained={base},experts=a={a};b={b},weights=a=0.5;b=0.6", "must sum to 1"),
    ("pretrained={base},experts=a={a},weights=a=1,backend=nope", "backend 'nope' is not an lmms-eval model"),
    ("pretrained={base},experts=a={a},weights=a=1,backend=vllm", "keeps the model outside this process"),
    ("pretrained={base},experts=a={a},weights=a=1,bogus_key=1", "backend 'qwen2_vl' refused its arguments"),
    ("pretrained={base},experts=a={a},weights=a=1,scale=half", "scale='half' is not a number"),
    ("pretrained={base},experts=a={a},weights=a=1,base_check=flase", "base_check='flase': write base_check=true"),
    ("pretrained={base},experts=a={a},weights=a=1,keep_base_on=gpu", "keep_base_on='gpu': use cpu, cuda or cuda:N"),
    # commas where lmms-eval needs ';': the stray halves went to the backend, and the message says so
    ("pretrained={base},experts=a={a};b={b},weights=a=0.5,b=0.5",
     "lmms-eval splits model_args on commas: separate experts and weights with ';', e.g. "
     "experts=a=SRC;b=SRC,weights=a=0.5;b=0.5; these went to the backend as arguments: b=0.5"),
    ("pretrained={base},experts=a={a},b={b},weights=a=0.3,b=0.7",
     "linear merge weights must sum to 1, these sum to 0.3; rescale them, or use method task_arithmetic with a "
     "scale (lmms-eval splits model_args on commas: separate "
     "experts and weights with ';', e.g. experts=a=SRC;b=SRC,weights=a=0.5;b=0.5; these went to the backend as "
     "arguments: b=0.7)"),
]


def test_bad_arguments_fail_visibly_through_the_cli(tmp_path, tiny_vlm, domains, lora_experts):
    """lmms-eval's CLI swallows a model's exception (exit 0); ours is still on screen, and nothing is
    evaluated or loaded."""
    args = BAD_ARGUMENTS[2][0].format(base=tiny_vlm.path, a=lora_experts["a"], b=lora_experts["b"])
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "merge_proxy", "--model_args", f"{args},{CPU}",
         "--tasks", domains.tasks["color"], "--include_path", str(domains.lmms_eval_dir),
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert "merge_proxy: linear merge weights must sum to 1, these sum to 1.1" in proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr  # refused before the base model loads
    assert not list((tmp_path / "out").rglob("*_results.json")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("model_args, message", BAD_ARGUMENTS)
def test_bad_arguments_are_named_before_the_base_loads(capfd, tiny_vlm, lora_experts, model_args, message):
    """Each bad model_arg, parsed as the CLI parses it (create_from_arg_string), in this process."""
    from merge_proxy.errors import MergeProxyError
    from merge_proxy.lmms_model import MergeProxyChat

    args = model_args.format(base=tiny_vlm.path, a=lora_experts["a"], b=lora_experts["b"])
    with pytest.raises(MergeProxyError, match=re.escape(message)):
        MergeProxyChat.create_from_arg_string(f"{args},{CPU}")
    assert "Loading weights" not in "".join(capfd.readouterr())


def test_backend_arguments_after_the_weights_are_no_comma_split(tiny_vlm, lora_experts):
    """A backend's own argument after weights=, and lmms-eval's batch_size, are not stray halves."""
    from merge_proxy.errors import MergeProxyError
    from merge_proxy.lmms_model import MergeProxyChat

    args = f"pretrained={tiny_vlm.path},experts=a={lora_experts['a']};b={lora_experts['b']},weights=a=0.6;b=0.6"
    with pytest.raises(MergeProxyError) as err:
        MergeProxyChat.create_from_arg_string(f"{args},max_pixels=1003520,{CPU}", {"batch_size": 1})
    assert str(err.value) == ("linear merge weights must sum to 1, these sum to 1.2; rescale them, or use method "
                              "task_arithmetic with a scale")


def test_one_expert_at_weight_one_through_the_cli(tmp_path, tiny_vlm, domains, lora_experts):
    """lmms-eval hands ``weights=1`` over as the int 1 (the single-expert baseline): still a mixture."""
    run = run_lmms_eval("merge_proxy", f"pretrained={tiny_vlm.path},experts={lora_experts['a']},weights=1,{CPU}",
                        [domains.tasks["color"]], tmp_path / "one", include_path=domains.lmms_eval_dir)
    assert len(run.responses(domains.tasks["color"])) == domains.eval_size


def test_identity_tells_apart_backend_arguments_and_retrained_local_experts(tmp_path, tiny_vlm, lora_experts):
    """Two instances that can answer differently never share lmms-eval's response cache."""
    import os
    import shutil

    from merge_proxy.lmms_model import MergeProxy

    expert = tmp_path / "expert-a"
    shutil.copytree(lora_experts["a"], expert)

    def identity(weights="1", **backend_args) -> str:
        model = MergeProxy(pretrained=str(tiny_vlm.path), experts=f"a={expert}", weights=weights, device_map="cpu",
                           device="cpu", **backend_args)
        return repr(model)

    plain = identity()
    assert identity() == plain  # the same model: the cache answers a re-run
    assert identity(weights={"a": 1.0}) == plain  # from Python, weights may be a mapping
    assert identity(max_pixels=3136) != plain
    assert identity(system_prompt="Answer in French.") != plain
    weights = expert / "adapter_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # re-trained in place
    assert identity() != plain
