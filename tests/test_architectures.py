"""The other families our users fine-tune, on tiny models: Qwen2.5-VL, and InternVL3.5 in
transformers' format (a Qwen3 language model with tied embeddings as in the 2B, bf16 weights, and an lmms-eval
backend, internvl_hf, that has only a chat protocol and always loads bf16).

The Qwen2-VL suites cover every path in depth; these check what differs per family against the same
independent references: parameter naming (PEFT's merge), dtypes (the backend's own load of the
exported model), tied weights, LLaMA-Factory's own adapter, the backend chosen from the architecture.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors import safe_open
from test_merge_engine import assert_close_rel, peft_reference, plan_for

from merge_proxy.engine import MergeMethod
from merge_proxy.export import export_full, export_lora
from merge_proxy.inplace import InPlaceMerger, rounded_on_load
from merge_proxy.safetensors_io import SafetensorsReader
from merge_proxy.testing.experts import load_base, make_lora_expert
from merge_proxy.testing.lmms import responses
from merge_proxy.testing.tiny_vlm import TinyVLMSpec, build_tiny_vlm

SCRIPTS = Path(sys.executable).parent
BACKENDS = {"qwen2_5_vl": "qwen2_5_vl", "internvl": "internvl_hf"}
WEIGHTS = {"a": 0.3, "b": 0.7}


def _build(name: str, root: Path) -> SimpleNamespace:
    """A tiny base of the family (Qwen2.5-VL stored in float32, InternVL in bf16 as the real one)
    and two random LoRA experts on its language model, large enough to change greedy answers."""
    base = build_tiny_vlm(root / "base", seed=0, spec=TinyVLMSpec(family=name))
    experts = {
        "a": make_lora_expert(base.path, root / "a", seed=1, std=0.2),
        "b": make_lora_expert(base.path, root / "b", seed=2, r=4, lora_alpha=8, use_rslora=True, std=0.2),
    }
    return SimpleNamespace(name=name, base=base, experts=experts, root=root)


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory):
    """Builds each family once per module, on first use."""
    built: dict[str, SimpleNamespace] = {}

    def get(name: str) -> SimpleNamespace:
        if name not in built:
            built[name] = _build(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(params=list(BACKENDS))
def family(request, families) -> SimpleNamespace:
    return families(request.param)


@pytest.fixture
def internvl(families) -> SimpleNamespace:
    return families("internvl")


def test_lora_export_equals_peft_cat_merge(tmp_path, family):
    plan = plan_for(family.base.path, family.experts)
    method = MergeMethod()
    export_full(plan, plan.mixture(WEIGHTS, method), method, tmp_path / "merged", dtype="float32")
    ours = load_base(tmp_path / "merged").state_dict()
    reference = peft_reference(family.base.path, family.experts, WEIGHTS)
    base = load_base(family.base.path).state_dict()
    assert ours.keys() == reference.keys()
    changed = [k for k in reference if not torch.equal(reference[k], base[k])]
    assert len(changed) == 14 and all(".language_model.layers." in k for k in changed)
    for key in reference:
        assert_close_rel(ours[key], reference[key], name=key)
        if key not in changed:
            assert torch.equal(ours[key], base[key]), key


def test_lora_format_gives_the_full_merges_logits(tmp_path, family):
    """`--format lora` on each family: ONE adapter PEFT loads onto the base, as the full merge."""
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor

    plan = plan_for(family.base.path, family.experts)
    method = MergeMethod()
    mixture = plan.mixture(WEIGHTS, method)
    export_full(plan, mixture, method, tmp_path / "full", dtype="float32")
    assert export_lora(plan, mixture, method, tmp_path / "lora").tensors_merged == 14
    processor = AutoProcessor.from_pretrained(family.base.path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 56), "blue")], return_tensors="pt")
    with torch.no_grad():
        full_logits = load_base(tmp_path / "full")(**inputs).logits
        adapter = PeftModel.from_pretrained(load_base(family.base.path), tmp_path / "lora").eval()
        lora_logits = adapter(**inputs).logits
        base_logits = load_base(family.base.path)(**inputs).logits
    assert not torch.allclose(base_logits, full_logits, atol=1e-2)
    # float32 W x + B (A x) against (W + B A) x, with these experts' large deltas
    torch.testing.assert_close(lora_logits, full_logits, rtol=1e-4, atol=1e-4)


def test_in_place_merge_in_the_backends_dtype_is_the_export_rounded_once(tmp_path, monkeypatch, family):
    """The backend loads bf16 whatever the checkpoint stores: merged in memory, the model equals the
    exported merge as the backend loads it (rounded once), and the base comes back exactly."""
    plan = plan_for(family.base.path, family.experts)
    method = MergeMethod()
    export_full(plan, plan.mixture(WEIGHTS, method), method, tmp_path / "merged", dtype="float32")
    exported = load_base(tmp_path / "merged", dtype=torch.bfloat16).state_dict()
    fresh = load_base(family.base.path, dtype=torch.bfloat16).state_dict()

    model = load_base(family.base.path, dtype=torch.bfloat16)
    touched = {n: p for n, p in model.named_parameters() if n in plan.touched}
    # A float32 checkpoint loaded in bf16: the merged parameters start from the stored float32 values.
    assert len(rounded_on_load(plan, touched)) == (14 if family.name == "qwen2_5_vl" else 0)
    merger = InPlaceMerger(model, plan)
    # A checkpoint read failing part-way leaves the base in place and the merger usable.
    real_read, calls = SafetensorsReader.read, []

    def failing_read(self, key):
        calls.append(key)
        if len(calls) == 5:
            raise OSError("disk gone")
        return real_read(self, key)

    monkeypatch.setattr(SafetensorsReader, "read", failing_read)
    if family.name == "qwen2_5_vl":
        with pytest.raises(OSError, match="disk gone"):
            merger.merge(WEIGHTS)
        assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())
    monkeypatch.setattr(SafetensorsReader, "read", real_read)
    merger.merge(WEIGHTS)
    merged = model.state_dict()
    for key, value in exported.items():
        assert torch.equal(merged[key], value), key
    merger.restore_base()
    for key, value in model.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, fresh[key]), key


def test_quantized_checkpoints_keep_the_loaded_theta0(tmp_path, families):
    """An FP8/int checkpoint's stored tensors are codes, not weights: never read as theta_0."""
    family = families("qwen2_5_vl")
    quantized = tmp_path / "base"  # the experts declare a folder named base
    shutil.copytree(family.base.path, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (quantized / "config.json").write_text(json.dumps(config))
    plan = plan_for(quantized, family.experts)
    model = load_base(family.base.path, dtype=torch.bfloat16)
    assert rounded_on_load(plan, {n: p for n, p in model.named_parameters() if n in plan.touched}) == {}


def test_full_expert_of_tied_embeddings_merges_and_stays_tied(tmp_path, internvl):
    """InternVL3.5-2B and Qwen2-VL-2B tie the output head to the embeddings; a full expert that
    changed them is merged once, and the export keeps the head tied rather than writing a copy."""
    family = internvl
    expert = load_base(family.base.path)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in (expert.model.language_model.embed_tokens.weight,
                      expert.model.language_model.layers[0].self_attn.q_proj.weight):
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    expert.save_pretrained(tmp_path / "full")
    experts = {"full": tmp_path / "full", "a": family.experts["a"]}
    weights = {"full": 0.6, "a": 0.4}
    plan = plan_for(family.base.path, experts)
    method = MergeMethod()
    export_full(plan, plan.mixture(weights, method), method, tmp_path / "merged", dtype="float32")

    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
        assert not any(k.endswith("lm_head.weight") for k in f.keys())
    ours = load_base(tmp_path / "merged")
    assert ours.lm_head.weight.data_ptr() == ours.model.language_model.embed_tokens.weight.data_ptr()
    # theta_0 + 0.6 (theta_full - theta_0) + 0.4 delta_a, with delta_a from PEFT's own merge
    base = load_base(family.base.path).state_dict()
    lora_only = peft_reference(family.base.path, {"a": family.experts["a"]}, {"a": 1.0})
    full = expert.state_dict()
    state = ours.state_dict()
    for key in base:
        expected = base[key] + 0.6 * (full[key] - base[key]) + 0.4 * (lora_only[key] - base[key])
        assert_close_rel(state[key], expected, name=key)
    embed = "model.language_model.embed_tokens.weight"
    assert not torch.equal(state[embed], base[embed])

    # In memory: the same values, the head still the embeddings, and the base back after a restore.
    model = load_base(family.base.path)
    merger = InPlaceMerger(model, plan)
    merger.merge(weights)
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    merger.restore_base()
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_proxy_answers_as_the_families_backend_on_the_exported_merge(tmp_path, family, domains):
    """merge_proxy picks the family's lmms-eval backend from the architecture and answers exactly as
    that backend does on `merge-proxy merge`'s checkpoint; without the merge it answers otherwise."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from merge_proxy.lmms_model import MergeProxyChat

    tasks = [domains.tasks["color"], domains.tasks["count"]]
    manager = TaskManager(include_path=str(domains.lmms_eval_dir))
    proxy = MergeProxyChat(
        pretrained=str(family.base.path), experts=";".join(f"{n}={p}" for n, p in family.experts.items()),
        weights="a=0.3;b=0.7", device_map="cpu", device="cpu",
    )
    assert proxy.backend_name == BACKENDS[family.name]

    def evaluate(model, **kwargs) -> dict[str, dict[int, str]]:
        out = simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=True,
                              bootstrap_iters=0, **kwargs)
        return {task: responses(out["samples"][task]) for task in tasks}

    merged = evaluate(proxy)
    args = ["--base", str(family.base.path), "--weights", "a=0.3,b=0.7", "--out", str(tmp_path / "merged")]
    for name, path in family.experts.items():
        args += ["--expert", f"{name}={path}"]
    proc = subprocess.run([str(SCRIPTS / "merge-proxy"), "merge", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from lmms_eval import models

    backend = models.get_model(BACKENDS[family.name])(pretrained=str(tmp_path / "merged"), device_map="cpu", device="cpu")
    # The very weights the backend loads from the exported merge (answers alone hide last-bit differences).
    ours, theirs = proxy.merger.model.state_dict(), backend.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    stock = evaluate(backend)
    assert merged == stock
    assert all(len(r) == domains.eval_size for r in merged.values())
    proxy.merger.restore_base()
    assert evaluate(proxy) != merged


@pytest.mark.slow
def test_llamafactory_trains_an_internvl_expert_that_merges_as_peft_does(tmp_path, domains):
    """LLaMA-Factory's intern_vl template and plugin on the tiny InternVL, through `merge-proxy
    train`; the adapter it saves (its module names) merges exactly as PEFT merges it."""
    from merge_proxy.testing.training import tiny_sft_config

    base = build_tiny_vlm(tmp_path / "base", seed=0, spec=TinyVLMSpec(family="internvl"))
    out = tmp_path / "expert"
    config = tiny_sft_config(base.path, domains.llamafactory_dir, domains.train_datasets["color"], out,
                             template="intern_vl", max_steps=3)
    config["expert"] = {"domain": "color", "push": False}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([str(SCRIPTS / "merge-proxy"), "train", str(path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads((out / "expert.json").read_text())
    assert (document["domain"], document["template"]) == ("color", "intern_vl")

    plan = plan_for(base.path, {"color": out})
    method = MergeMethod()
    export_full(plan, plan.mixture({"color": 1.0}, method), method, tmp_path / "merged", dtype="float32")
    ours = load_base(tmp_path / "merged").state_dict()
    reference = peft_reference(base.path, {"color": out}, {"color": 1.0})
    base_state = load_base(base.path).state_dict()
    changed = [k for k in reference if not torch.equal(reference[k], base_state[k])]
    assert changed and all(".language_model.layers." in k for k in changed)
    for key in reference:
        assert_close_rel(ours[key], reference[key], name=key)


@pytest.mark.slow
def test_sweep_of_an_internvl_recipe_without_a_backend(tmp_path, internvl, domains):
    """A recipe need not name the backend: the sweep takes the architecture's (internvl_hf, chat only)."""
    family = internvl
    recipe = {
        "name": "tiny-internvl", "base": str(family.base.path),
        "experts": {n: str(p) for n, p in family.experts.items()},
        "mixtures": [{"explicit": [{"a": 1, "b": 0}, {"a": 0.3, "b": 0.7}]}],
        "benchmarks": [{"task": domains.tasks["color"], "limit": 4}],
        "include_path": str(domains.lmms_eval_dir),
        "backend_args": {"device_map": "cpu", "device": "cpu"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    proc = subprocess.run([str(SCRIPTS / "merge-proxy"), "sweep", str(path), "--out", str(tmp_path / "sweep")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "sweep" / "journal.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["mode"] == "proxy" and 0.0 <= r["score"] <= 1.0 for r in records)
