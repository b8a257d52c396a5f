"""The merge engine against independent references: PEFT's own merge and a manual state-dict sum."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge_proxy.engine import MergeMethod, build_plan
from merge_proxy.errors import ConfigError, MergeProxyError
from merge_proxy.experts import ExpertSpec, resolve, resolve_experts
from merge_proxy.export import export_full, export_lora
from merge_proxy.inplace import InPlaceMerger
from merge_proxy.testing.experts import load_base, make_full_expert, make_lora_expert

SCRIPTS = Path(sys.executable).parent
LORA_WEIGHTS = {"a": 0.2, "b": 0.3, "c": 0.5}


def plan_for(base: Path, experts: dict[str, Path]):
    base_model = resolve(ExpertSpec(str(base)), for_base=True)
    resolved = resolve_experts([ExpertSpec(str(p), name=n) for n, p in experts.items()])
    return build_plan(base_model, resolved)


def peft_reference(base: Path, experts: dict[str, Path], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """PEFT's exact combination: add_weighted_adapter(cat) + merge_and_unload."""
    from peft import PeftModel

    names = list(experts)
    model = PeftModel.from_pretrained(load_base(base), experts[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(experts[name], adapter_name=name)
    model.add_weighted_adapter(names, [weights[n] for n in names], "mix", combination_type="cat")
    model.set_adapter("mix")
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6, name: str = "") -> None:
    err = (actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)
    assert err <= rel, f"{name}: relative error {err:.3g} > {rel}"


def test_export_equals_peft_cat_merge(tmp_path, tiny_vlm, lora_experts):
    plan = plan_for(tiny_vlm.path, lora_experts)
    method = MergeMethod()
    export_full(plan, plan.mixture(LORA_WEIGHTS, method), method, tmp_path / "merged")
    ours = load_base(tmp_path / "merged").state_dict()
    reference = peft_reference(tiny_vlm.path, lora_experts, LORA_WEIGHTS)
    base = load_base(tiny_vlm.path).state_dict()
    assert ours.keys() == reference.keys()
    changed = 0
    for key in reference:
        assert_close_rel(ours[key], reference[key], name=key)
        if not torch.equal(reference[key], base[key]):
            changed += 1
        else:  # untouched: bit-identical to the base
            assert torch.equal(ours[key], base[key]), key
    assert changed == 14  # 7 linear layers x 2 blocks


def test_in_place_merge_and_remerge(tiny_vlm, lora_experts):
    model = load_base(tiny_vlm.path)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_for(tiny_vlm.path, lora_experts)
    merger = InPlaceMerger(model, plan)
    merger.merge(LORA_WEIGHTS)
    reference = peft_reference(tiny_vlm.path, lora_experts, LORA_WEIGHTS)
    for key, value in model.state_dict().items():
        assert_close_rel(value, reference[key], name=key)

    other = {"a": 0.6, "b": 0.1, "c": 0.3}
    merger.remerge(other)
    remerged = {k: v.clone() for k, v in model.state_dict().items()}
    fresh_model = load_base(tiny_vlm.path)
    InPlaceMerger(fresh_model, plan).merge(other)
    for key, value in fresh_model.state_dict().items():
        assert torch.equal(remerged[key], value), key  # re-merge is bit-identical to a fresh merge
    merger.restore_base()
    for key, value in model.state_dict().items():
        assert torch.equal(value, base_state[key]), key


def test_in_place_merge_keeps_the_loaded_tensors_as_theta0(tiny_vlm, lora_experts):
    """No copy of the base: the loaded storage becomes theta_0 and comes back on restore_base."""
    model = load_base(tiny_vlm.path)
    plan = plan_for(tiny_vlm.path, lora_experts)
    params = dict(model.named_parameters())
    loaded = {name: params[name].data_ptr() for name in plan.touched}
    untouched = {n: p.data_ptr() for n, p in params.items() if n not in loaded}
    merger = InPlaceMerger(model, plan)
    assert merger.base_copy_bytes == 0  # nothing held until a merge
    merger.merge(LORA_WEIGHTS)
    assert all(params[n].data_ptr() != ptr for n, ptr in loaded.items())
    assert all(params[n].data_ptr() == ptr for n, ptr in untouched.items())
    assert merger.base_copy_bytes == sum(params[n].numel() * params[n].element_size() for n in loaded)
    merger.restore_base()
    assert {n: params[n].data_ptr() for n in loaded} == loaded
    assert merger.base_copy_bytes == 0
    merger.merge(LORA_WEIGHTS)  # and merges again after a restore
    reference = peft_reference(tiny_vlm.path, lora_experts, LORA_WEIGHTS)
    for key, value in model.state_dict().items():
        assert_close_rel(value, reference[key], name=key)


def test_plan_prefetched_while_the_base_loads(tmp_path, tiny_vlm, lora_experts, full_experts):
    from merge_proxy.inplace import PlanPrefetch
    from merge_proxy.naming import ParameterNames

    base_model = resolve(ExpertSpec(str(tiny_vlm.path)), for_base=True)
    experts = {"a": lora_experts["a"], "b": lora_experts["b"], "f1": full_experts["f1"]}
    resolved = resolve_experts([ExpertSpec(str(p), name=n) for n, p in experts.items()])
    prefetch = PlanPrefetch(base_model, resolved)
    model = load_base(tiny_vlm.path)
    plan = prefetch.result(model)
    direct = build_plan(base_model, resolved, names=ParameterNames.from_model(model))
    assert plan.touched == direct.touched and set(plan.lora) == {"a", "b"} and set(plan.full) == {"f1"}
    for name, factors in direct.lora.items():
        assert factors.keys() == plan.lora[name].keys()
        for param, factor in factors.items():
            assert torch.equal(plan.lora[name][param].A, factor.A) and torch.equal(plan.lora[name][param].B, factor.B)
    # The factors of each expert are views of one staged buffer, moved once.
    for factors in plan.lora.values():
        storages = {t.untyped_storage().data_ptr() for f in factors.values() for t in (f.A, f.B)}
        assert len(storages) == 1
    before = {n: next(iter(f.values())).A.data_ptr() for n, f in plan.lora.items()}
    plan.place_lora("cpu")
    assert {n: next(iter(f.values())).A.data_ptr() for n, f in plan.lora.items()} == before
    # A base whose config transformers cannot build (remote code): planned from the loaded model.
    import shutil

    odd = tmp_path / "remote" / tiny_vlm.path.name
    shutil.copytree(tiny_vlm.path, odd)
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "architectures": ["RemoteCodeOnlyModel"]}))
    fallback = PlanPrefetch(resolve(ExpertSpec(str(odd)), for_base=True), resolved).result(model)
    assert fallback.touched == direct.touched and fallback.names.model_type == direct.names.model_type
    # A problem with an expert surfaces from result(), named as without the prefetch.
    foreign = make_lora_expert(tiny_vlm.path, tmp_path / "bad", seed=9, r=4)
    cfg = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**cfg, "r": 5}))
    [bad] = resolve_experts([ExpertSpec(str(foreign), name="bad")])
    with pytest.raises(MergeProxyError, match=r"expert 'bad'.*config says r=5"):
        PlanPrefetch(base_model, [bad]).result(model)


def test_bf16_remerges_do_not_drift(tiny_vlm, lora_experts):
    model = load_base(tiny_vlm.path, dtype=torch.bfloat16)
    merger = InPlaceMerger(model, plan_for(tiny_vlm.path, lora_experts))
    merger.merge(LORA_WEIGHTS)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(40):
        merger.remerge({"a": 1.0, "b": 0.0, "c": 0.0} if i % 2 else {"a": 0.0, "b": 0.5, "c": 0.5})
    merger.remerge(LORA_WEIGHTS)
    for key, value in model.state_dict().items():
        assert torch.equal(value, first[key]), key


def test_lora_format_gives_the_same_logits(tmp_path, tiny_vlm, lora_experts):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor

    plan = plan_for(tiny_vlm.path, lora_experts)
    method = MergeMethod()
    mixture = plan.mixture(LORA_WEIGHTS, method)
    export_full(plan, mixture, method, tmp_path / "full")
    result = export_lora(plan, mixture, method, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 8 + 4 + 8 and config["lora_alpha"] == config["r"]
    assert result.tensors_merged == 14

    processor = AutoProcessor.from_pretrained(tiny_vlm.path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 56), "blue")], return_tensors="pt")
    with torch.no_grad():
        full_logits = load_base(tmp_path / "full")(**inputs).logits
        adapter = PeftModel.from_pretrained(load_base(tiny_vlm.path), tmp_path / "lora").eval()
        lora_logits = adapter(**inputs).logits
        base_logits = load_base(tiny_vlm.path)(**inputs).logits
    assert not torch.allclose(base_logits, full_logits, atol=1e-4)  # the merge changes the model
    torch.testing.assert_close(lora_logits, full_logits, rtol=1e-5, atol=1e-5)


def test_full_experts_streamed_equal_manual_state_dict_sum(tmp_path, tiny_vlm, full_experts):
    weights = {"f1": 0.25, "f2": 0.75}
    plan = plan_for(tiny_vlm.path, full_experts)
    method = MergeMethod()
    export_full(plan, plan.mixture(weights, method), method, tmp_path / "merged", max_shard_bytes=150_000)
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded

    base = load_base(tiny_vlm.path).state_dict()
    experts = {n: load_base(p).state_dict() for n, p in full_experts.items()}
    ours = load_base(tmp_path / "merged").state_dict()
    for key, theta0 in base.items():
        expected = theta0.double() + sum(w * (experts[n][key].double() - theta0.double()) for n, w in weights.items())
        assert_close_rel(ours[key], expected.float(), name=key)


@pytest.mark.parametrize("block", [None, 300], ids=["default-blocks", "row-blocks"])
def test_mixed_lora_and_full_task_arithmetic(tmp_path, monkeypatch, tiny_vlm, lora_experts, full_experts, block):
    if block is not None:  # the tiny tensors fit one block; force several rows per block and ragged ends
        monkeypatch.setattr("merge_proxy.engine._CPU_BLOCK_ELEMENTS", block)
    experts = {"a": lora_experts["a"], "f1": full_experts["f1"]}
    weights = {"a": 0.7, "f1": 0.6}
    method = MergeMethod("task_arithmetic", scale=0.5)
    plan = plan_for(tiny_vlm.path, experts)
    export_full(plan, plan.mixture(weights, method), method, tmp_path / "merged")
    base = load_base(tiny_vlm.path).state_dict()
    full = load_base(full_experts["f1"]).state_dict()
    lora = load_file(lora_experts["a"] / "adapter_model.safetensors")
    ours = load_base(tmp_path / "merged").state_dict()
    for key, theta0 in base.items():
        expected = theta0.double() + 0.5 * 0.6 * (full[key].double() - theta0.double())
        module = key[: -len(".weight")]
        a_key = f"base_model.model.{module}.lora_A.weight"
        if a_key in lora:
            b = lora[a_key.replace("lora_A", "lora_B")].double()
            expected += 0.5 * 0.7 * (16 / 8) * (b @ lora[a_key].double())
        assert_close_rel(ours[key], expected.float(), name=key)
    record = json.loads((tmp_path / "merged" / "merge_proxy.json").read_text())
    assert record["method"] == "task_arithmetic" and record["scale"] == 0.5
    assert record["weights"] == weights


def test_export_dtype_and_card(tmp_path, tiny_vlm, lora_experts):
    from huggingface_hub import ModelCard

    plan = plan_for(tiny_vlm.path, lora_experts)
    method = MergeMethod()
    export_full(plan, plan.mixture(LORA_WEIGHTS, method), method, tmp_path / "bf16", dtype="bfloat16")
    tensors = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    card = ModelCard.load(tmp_path / "bf16" / "README.md")
    # local base and experts that name no Hub base: no lineage to draw, so no relation either
    assert (card.data.get("base_model"), card.data.get("base_model_relation")) == (None, None)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert "merge-proxy" in card.data.tags
    for name, weight in LORA_WEIGHTS.items():
        assert f"| `{name}` | {weight:.6g} | lora |" in card.text
    # The base's tokenizer and processor travel with the merge, so lmms-eval can load it.
    for fname in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "bf16" / fname).read_bytes() == (tiny_vlm.path / fname).read_bytes()


def test_a_merge_from_a_local_base_names_the_hub_base_its_experts_record(tmp_path, tiny_vlm, lora_experts):
    """A local copy of a published base: the card's lineage comes from the experts' expert.json."""
    from huggingface_hub import ModelCard

    from merge_proxy.expert_metadata import BaseModelRef, ExpertMetadata, write_expert_metadata

    base = shutil.copytree(tiny_vlm.path, tmp_path / "base")  # a local copy, with the base's card
    (base / "README.md").write_text("---\nlicense: other\nlicense_name: tiny\nlicense_link: LICENSE\n---\n# tiny base\n")
    experts = {}
    for name in ("a", "b"):
        experts[name] = shutil.copytree(lora_experts[name], tmp_path / name)
        write_expert_metadata(experts[name], ExpertMetadata(
            domain=name, artifact="adapter", base_model=BaseModelRef(id="acme/tiny-vlm", path=str(base))))
    plan = plan_for(base, experts)
    method = MergeMethod()
    mixture = plan.mixture({"a": 0.5, "b": 0.5}, method)
    export_full(plan, mixture, method, tmp_path / "full")
    export_lora(plan, mixture, method, tmp_path / "lora")
    full, lora = (ModelCard.load(tmp_path / d / "README.md").data for d in ("full", "lora"))
    assert (full.base_model, full.base_model_relation, full.library_name) == (["acme/tiny-vlm"], "merge", "transformers")
    assert (lora.base_model, lora.base_model_relation, lora.library_name) == ("acme/tiny-vlm", "adapter", "peft")
    assert lora.pipeline_tag == full.pipeline_tag == "image-text-to-text" and "lora" in lora.tags
    assert lora.license == full.license == "other"  # a merge is bound by its base's license
    assert full.license_link.endswith("/acme/tiny-vlm/blob/main/LICENSE")  # in the base's repo, not ours

    # experts that disagree on their base name none of them
    write_expert_metadata(experts["b"], ExpertMetadata(domain="b", artifact="adapter",
                                                       base_model=BaseModelRef(id="acme/other", path=str(base))))
    export_full(plan_for(base, experts), mixture, method, tmp_path / "full2")
    assert ModelCard.load(tmp_path / "full2" / "README.md").data.get("base_model") is None


def test_pipeline_tag_follows_the_models_files(tmp_path, tiny_vlm):
    from merge_proxy.model_cards import pipeline_tag

    assert pipeline_tag(tiny_vlm.path) == "image-text-to-text"
    text_only = tmp_path / "llm"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    assert pipeline_tag(text_only) == "text-generation"
    (text_only / "preprocessor_config.json").write_text("{}")  # an adapter dir of a VLM: only its processor says so
    assert pipeline_tag(text_only) == "image-text-to-text"


# --------------------------------------------------------------------------------------------------
# errors: each names the cause and the fix, and nothing is written


def merge_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "merge-proxy"), "merge", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "weights, message",
    [
        ("a=0.5", "no weight for expert(s) 'b'"),
        ("a=0.5,b=0.3,z=0.2", "unknown expert(s) 'z'"),
        ("a=0.5,b=0.6", "must sum to 1, these sum to 1.1"),
        ("a=inf,b=0", "must be finite"),
        ("a=x,b=1", "'x', not a number"),
        ("0.5", "1 weights for 2 experts"),
    ],
)
def test_cli_weight_errors(tmp_path, tiny_vlm, lora_experts, weights, message):
    out = tmp_path / "out"
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", f"a={lora_experts['a']}",
                     "--expert", f"b={lora_experts['b']}", "--weights", weights, "--out", str(out))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 or "error:" in proc.stderr.splitlines()[-1]
    assert not out.exists()


def test_cli_names_a_duplicate_expert_name_not_the_weights(tmp_path, tiny_vlm, lora_experts):
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", f"a={lora_experts['a']}", "--expert",
                     f"a={lora_experts['b']}", "--weights", "0.3,0.7", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "two experts are named 'a'; give each expert a different NAME" in proc.stderr


def test_cli_says_how_an_unnamed_expert_was_named(tmp_path, tiny_vlm, lora_experts):
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", str(lora_experts["a"]), "--expert",
                     f"b={lora_experts['b']}", "--weights", "a=0.3,b=0.7", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"weights name unknown expert(s) 'a'; the experts are: expert0, b ({lora_experts['a']} is named expert0, "
        "by its expert.json's domain or its position: name experts with --expert NAME=SRC)")
    assert not (tmp_path / "out").exists()


def test_refuses_dora_and_modules_to_save(tmp_path, tiny_vlm):
    dora = make_lora_expert(tiny_vlm.path, tmp_path / "dora", seed=4, use_dora=True)
    with pytest.raises(MergeProxyError, match=r"expert 'dora'.*DoRA.*retrain it as plain LoRA"):
        plan_for(tiny_vlm.path, {"dora": dora})
    saved = make_lora_expert(tiny_vlm.path, tmp_path / "saved", seed=5, modules_to_save=["lm_head"])
    with pytest.raises(MergeProxyError, match=r"expert 'saved'.*modules_to_save"):
        plan_for(tiny_vlm.path, {"saved": saved})


def test_refuses_adapter_tensor_matching_no_base_parameter(tmp_path, tiny_vlm, lora_experts):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_bytes((lora_experts["a"] / "adapter_config.json").read_bytes())
    tensors = load_file(lora_experts["a"] / "adapter_model.safetensors")
    renamed = {k.replace("layers.1.mlp.up_proj", "layers.7.mlp.up_proj"): v for k, v in tensors.items()}
    save_file(renamed, bad / "adapter_model.safetensors")
    with pytest.raises(MergeProxyError, match=r"expert 'bad'.*'model.language_model.layers.7.mlp.up_proj'.*no parameter"):
        plan_for(tiny_vlm.path, {"bad": bad})


def test_refuses_expert_of_another_base(tmp_path, tiny_vlm):
    from merge_proxy.testing.tiny_vlm import TinyVLMSpec, build_tiny_vlm

    other = build_tiny_vlm(tmp_path / "other-base", spec=TinyVLMSpec(hidden_size=32, intermediate_size=64))
    expert = make_lora_expert(other.path, tmp_path / "foreign", seed=6)
    with pytest.raises(MergeProxyError, match=r"expert 'foreign' declares base model"):
        plan_for(tiny_vlm.path, {"foreign": expert})
    # Even with the declared-base check off, shapes tell.
    base_model = resolve(ExpertSpec(str(tiny_vlm.path)), for_base=True)
    foreign = resolve_experts([ExpertSpec(str(expert), name="foreign")])
    with pytest.raises(MergeProxyError, match=r"expert 'foreign'.*delta but base parameter.*different base"):
        build_plan(base_model, foreign, check_declared_base=False)
    full = make_full_expert(other.path, tmp_path / "foreign-full", seed=7)
    with pytest.raises(MergeProxyError, match=r"expert 'ff': tensor for .* but the base has"):
        plan_for(tiny_vlm.path, {"ff": full})


def test_refuses_pickle_unless_allowed(tmp_path, tiny_vlm, lora_experts):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_bytes((lora_experts["a"] / "adapter_config.json").read_bytes())
    torch.save(load_file(lora_experts["a"] / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    with pytest.raises(MergeProxyError, match=r"only pickle weights \(adapter_model.bin\).*--allow-pickle"):
        resolve_experts([f"p={pickled}"])
    [expert] = resolve_experts([f"p={pickled}"], allow_pickle=True)
    base_model = resolve(ExpertSpec(str(tiny_vlm.path)), for_base=True)
    assert len(build_plan(base_model, [expert]).touched) == 14


def test_existing_output_is_never_touched(tmp_path, tiny_vlm, lora_experts):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", f"a={lora_experts['a']}", "--weights", "a=1",
                     "--out", str(out))
    assert proc.returncode == 2
    assert "already exists and is not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def broken_copy(expert: Path, out: Path, tensor: str, value: float) -> Path:
    """A copy of a full expert whose first tensor matching ``tensor`` holds one non-finite value."""
    from safetensors.torch import save_file

    out.mkdir()
    for f in expert.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    tensors = load_file(out / "model.safetensors")
    key = sorted(k for k in tensors if tensor in k)[0]
    tensors[key].view(-1)[0] = value
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_failure_mid_export_leaves_no_directory(tmp_path, tiny_vlm, full_experts):
    """A non-finite expert tensor is found mid-way: the partial output is removed."""
    broken = broken_copy(full_experts["f1"], tmp_path / "broken", "layers.1.mlp.down_proj", float("nan"))
    out = tmp_path / "out"
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", f"x={broken}", "--weights", "x=1", "--out", str(out))
    assert proc.returncode == 2
    assert "non-finite" in proc.stderr and "layers.1.mlp.down_proj" in proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_cli_writes_a_model_transformers_loads(tmp_path, tiny_vlm, lora_experts):
    out = tmp_path / "merged"
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", f"a={lora_experts['a']}",
                     "--expert", f"b={lora_experts['b']}", "--weights", "0.4,0.6", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "a=0.4,b=0.6" in proc.stdout
    model = load_base(out)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"


def test_in_place_non_finite_merge_restores_the_base(tmp_path, tiny_vlm, full_experts):
    from merge_proxy.engine import MergeError

    broken = broken_copy(full_experts["f1"], tmp_path / "broken", "layers.0.self_attn.q_proj.weight", float("inf"))
    model = load_base(tiny_vlm.path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merger = InPlaceMerger(model, plan_for(tiny_vlm.path, {"x": broken, "f2": full_experts["f2"]}))
    with pytest.raises(MergeError, match=r"layers\.0\.self_attn\.q_proj.*non-finite"):
        merger.merge({"x": 0.5, "f2": 0.5})
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    merger.merge({"x": 0.0, "f2": 1.0})  # a weight of 0 never reads the broken expert
    assert merger.mixture is not None and merger.mixture.weight("f2") == 1.0


def adapter_copy(expert: Path, out: Path, config: dict | None = None, rename: tuple[str, str] | None = None,
                 poison: str | None = None) -> Path:
    """A copy of a LoRA expert with config entries changed, keys renamed, or one value set to nan."""
    from safetensors.torch import save_file

    out.mkdir()
    cfg = json.loads((expert / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    tensors = load_file(expert / "adapter_model.safetensors")
    if rename:
        tensors = {k.replace(*rename): v for k, v in tensors.items()}
    if poison:
        key = sorted(k for k in tensors if poison in k)[0]
        tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def test_non_finite_inputs_are_refused_before_any_work(tmp_path, tiny_vlm, lora_experts):
    with pytest.raises(MergeProxyError, match=r"--scale must be a finite number, got nan"):
        MergeMethod("task_arithmetic", float("nan"))
    nan = adapter_copy(lora_experts["a"], tmp_path / "nan", poison="layers.1.mlp.up_proj.lora_B")
    with pytest.raises(MergeProxyError, match=r"expert 'n': adapter tensor '.*layers\.1\.mlp\.up_proj\.lora_B.*inf or nan"):
        plan_for(tiny_vlm.path, {"n": nan})
    out = tmp_path / "out"
    proc = merge_cli("--base", str(tiny_vlm.path), "--expert", f"n={nan}", "--weights", "n=1", "--format", "lora",
                     "--out", str(out))
    assert proc.returncode == 2 and "inf or nan" in proc.stderr
    assert not out.exists()


def test_fan_in_fan_out_on_linear_layers_is_ignored_as_peft_ignores_it(tmp_path, tiny_vlm, lora_experts):
    """PEFT applies fan_in_fan_out to Conv1D layers only; an adapter of nn.Linear layers saying true
    merges exactly as PEFT merges it (here: its config copied from a GPT-2 recipe)."""
    from peft import PeftModel

    flagged = adapter_copy(lora_experts["a"], tmp_path / "fifo", config={"fan_in_fan_out": True})
    plan = plan_for(tiny_vlm.path, {"a": flagged})
    method = MergeMethod()
    export_full(plan, plan.mixture({"a": 1.0}, method), method, tmp_path / "merged")
    ours = load_base(tmp_path / "merged").state_dict()
    reference = PeftModel.from_pretrained(load_base(tiny_vlm.path), flagged).merge_and_unload().state_dict()
    base = load_base(tiny_vlm.path).state_dict()
    assert sum(not torch.equal(reference[k], base[k]) for k in reference) == 14
    for key in reference:
        assert_close_rel(ours[key], reference[key], name=key)


def test_lora_format_names_modules_as_the_base_holds_them(tmp_path, tiny_vlm, lora_experts):
    """An expert saved with transformers 4 naming (model.layers...) next to one saved with transformers 5
    naming: the one adapter uses the base's in-memory names, and its config is clean and pinned."""
    from peft import PeftModel

    old = adapter_copy(lora_experts["a"], tmp_path / "old", rename=("model.language_model.layers", "model.layers"),
                       config={"layers_to_transform": [0]})
    experts = {"a": old, "b": lora_experts["b"]}
    weights = {"a": 0.4, "b": 0.6}
    plan = plan_for(tiny_vlm.path, experts)
    method = MergeMethod()
    export_lora(plan, plan.mixture(weights, method), method, tmp_path / "lora")
    keys = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert all(".model.language_model.layers." in k for k in keys), sorted(keys)[:2]
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_vlm.path.resolve())
    assert "layers_to_transform" not in config and config["revision"] is None
    merged = PeftModel.from_pretrained(load_base(tiny_vlm.path), tmp_path / "lora").merge_and_unload().state_dict()
    reference = peft_reference(tiny_vlm.path, {"a": lora_experts["a"], "b": lora_experts["b"]}, weights)
    for key in reference:
        assert_close_rel(merged[key], reference[key], name=key)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights='pissa_niter_4' saved without conversion"),
        ({"init_lora_weights": "olora"}, "init_lora_weights='olora'"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights='loftq'"),
        ({"alora_invocation_tokens": [3, 4]}, "aLoRA"),
        ({"use_qalora": True}, "QALoRA"),
        ({"lora_bias": True}, "lora_bias"),
    ],
)
def test_refuses_adapters_that_are_not_a_delta_of_this_base(tmp_path, tiny_vlm, lora_experts, config, message):
    variant = adapter_copy(lora_experts["a"], tmp_path / "variant", config=config)
    with pytest.raises(MergeProxyError, match=rf"expert 'v'.*{re.escape(message)}.*would not be merged exactly"):
        plan_for(tiny_vlm.path, {"v": variant})


def test_experts_that_leave_a_weight_alone_leave_it_bit_identical(tmp_path, tiny_vlm):
    """task_arithmetic with weights far from summing to 1: every weight an expert did not change stays
    exactly the base's (frozen parts such as the vision tower), not theta_0 * (1 - sum w) rounded."""
    same = {n: make_full_expert(tiny_vlm.path, tmp_path / n, seed=i, only=()) for i, n in enumerate(("s1", "s2"))}
    plan = plan_for(tiny_vlm.path, same)
    method = MergeMethod("task_arithmetic", 0.9)
    export_full(plan, plan.mixture({"s1": 3.0, "s2": -2.2}, method), method, tmp_path / "merged")
    ours = load_file(tmp_path / "merged" / "model.safetensors")
    base = load_file(tiny_vlm.path / "model.safetensors")
    assert ours.keys() == base.keys()
    assert [k for k in base if not torch.equal(ours[k], base[k])] == []


def test_in_place_merge_does_not_depend_on_the_callers_expert_order(tiny_vlm, lora_experts):
    from merge_proxy.mixture import Mixture

    merger = InPlaceMerger(load_base(tiny_vlm.path), plan_for(tiny_vlm.path, lora_experts))
    merger.merge(LORA_WEIGHTS)
    first = {k: v.clone() for k, v in merger.model.state_dict().items()}
    merger.merge(Mixture(tuple(reversed(list(LORA_WEIGHTS.items())))))
    assert [k for k, v in merger.model.state_dict().items() if not torch.equal(v, first[k])] == []


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_mid_export_leaves_no_directory(tmp_path, monkeypatch, tiny_vlm, full_experts, signame):
    """SLURM's time limit or scancel sends SIGTERM, a dropped ssh session SIGHUP: the CLI unwinds like
    Ctrl-C and removes the partial output, and the parent directories it created for it."""
    import os
    import signal

    import merge_proxy.export
    from merge_proxy.cli import main

    signum = getattr(signal, signame)
    real = merge_proxy.export.write_streaming

    def write_then_terminated(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(merge_proxy.export, "write_streaming", write_then_terminated)
    # A run under nohup (a CI job may be one) ignores SIGHUP, and merge leaves it ignored: this test is
    # about a terminal that can hang up.
    ignored = signal.getsignal(signum)
    signal.signal(signum, signal.SIG_DFL)
    try:
        out = tmp_path / "new" / "deep" / "out"
        rc = main(["merge", "--base", str(tiny_vlm.path), "--expert", f"f={full_experts['f1']}", "--weights",
                   "f=1", "--out", str(out)])
        assert rc == 128 + signum
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signum) is signal.SIG_DFL
    finally:
        signal.signal(signum, ignored)


def test_merge_under_nohup_leaves_sighup_ignored():
    import signal

    from merge_proxy.cli import _terminate_as_interrupt

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        restore = _terminate_as_interrupt(hangup=True)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        restore()
    finally:
        signal.signal(signal.SIGHUP, before)


def test_outputs_follow_the_umask_and_orphans_are_removed(tmp_path):
    """mkdtemp/mkstemp create 0700/0600: a merged model or report on a shared cluster must be readable
    by the group as any file the user writes. A staging directory left by a killed process of this host
    is removed by the next output to the same place; another live process's is left alone."""
    import os
    import socket
    import stat
    import subprocess

    from merge_proxy.atomic import atomic_output_dir, atomic_write_text

    old = os.umask(0o027)
    try:
        with atomic_output_dir(tmp_path / "out") as staging:
            (staging / "f").write_text("x")
        atomic_write_text(tmp_path / "recipe.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "recipe.yaml").stat().st_mode) == 0o640

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    orphan = tmp_path / f".model.partial-{host}-{dead.pid}-abc"
    alive = tmp_path / f".model.partial-{host}-{os.getppid()}-def"
    elsewhere = tmp_path / f".model.partial-otherhost-{dead.pid}-ghi"
    for d in (orphan, alive, elsewhere):
        d.mkdir()
    with atomic_output_dir(tmp_path / "model"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model")) == sorted(
        [alive.name, elsewhere.name])


def test_outputs_that_cannot_be_made_are_refused_before_any_work(tmp_path):
    from merge_proxy.atomic import check_new_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"output .*file is a file"):
        check_new_output_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"is under .*file, which is a file"):
        check_new_output_dir(tmp_path / "file" / "out")


def test_pickle_full_checkpoints_are_refused_with_the_fix(tmp_path, tiny_vlm):
    pickled = tmp_path / "pickled-full"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((tiny_vlm.path / "config.json").read_bytes())
    torch.save(load_file(tiny_vlm.path / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(MergeProxyError, match=r"--allow-pickle covers LoRA adapters only.*save_pretrained"):
        resolve_experts([f"p={pickled}"], allow_pickle=True)


def test_base_tensors_transformers_converts_are_copied_through(tmp_path):
    """A Mixtral base (its experts' weights fused by transformers on load) with a LoRA on q_proj: the
    untouched MoE tensors are written as the base has them, the merge equals PEFT's."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1)
    torch.manual_seed(0)
    MixtralForCausalLM(config).save_pretrained(tmp_path / "moe")
    peft_model = get_peft_model(MixtralForCausalLM.from_pretrained(tmp_path / "moe"),
                                LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "moe-lora")
    plan = plan_for(tmp_path / "moe", {"q": tmp_path / "moe-lora"})
    method = MergeMethod()
    export_full(plan, plan.mixture({"q": 1.0}, method), method, tmp_path / "merged")
    assert load_file(tmp_path / "merged" / "model.safetensors").keys() == load_file(tmp_path / "moe" / "model.safetensors").keys()
    ours = MixtralForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    base = MixtralForCausalLM.from_pretrained(tmp_path / "moe")
    reference = PeftModel.from_pretrained(base, tmp_path / "moe-lora").merge_and_unload().state_dict()
    assert sorted(k for k in reference if not torch.equal(reference[k], ours[k]) and "q_proj" not in k) == []
    for key in reference:
        assert_close_rel(ours[key], reference[key], name=key)
    # A full expert saved in the loaded (fused) format changes a parameter this base stores only
    # per expert: refused before anything is written, never silently left out.
    fused = MixtralForCausalLM.from_pretrained(tmp_path / "moe")
    with torch.no_grad():
        fused.model.layers[0].mlp.experts.gate_up_proj.add_(0.01)
    fused.save_pretrained(tmp_path / "fused", save_original_format=False)
    plan = plan_for(tmp_path / "moe", {"fused": tmp_path / "fused"})
    with pytest.raises(MergeProxyError, match=r"experts change 'model\.layers\.0\.mlp\.experts\.gate_up_proj'.*converts on load"):
        export_full(plan, plan.mixture({"fused": 1.0}, method), method, tmp_path / "not-written")
    assert not (tmp_path / "not-written").exists()


def test_sigterm_unwinds_this_process_only(tmp_path):
    """Forked children (datasets.map workers, pools stopped with SIGTERM) inherit the handler and
    must die by the default action, not raise and print a traceback in every worker."""
    import multiprocessing
    import signal
    import time

    from merge_proxy.cli import _terminate_as_interrupt

    previous = signal.getsignal(signal.SIGTERM)
    restore = _terminate_as_interrupt()
    assert restore is not None
    try:
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        child.start()
        time.sleep(0.5)
        child.terminate()
        child.join(10)
        assert child.exitcode == -signal.SIGTERM
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_conv1d_layers_merge_transposed_as_peft_does(tmp_path):
    """GPT-2's Conv1D stores weights in x out: PEFT's fan_in_fan_out delta, in memory, on disk and as
    one adapter. Two experts, one saying fan_in_fan_out false (PEFT forces it on for Conv1D)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(
        tmp_path / "gpt2")
    experts = {}
    for i, fifo in enumerate((True, False)):
        model = get_peft_model(GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"), LoraConfig(
            r=2 + i, target_modules=["c_attn", "c_fc"], fan_in_fan_out=fifo, init_lora_weights=False))
        model.save_pretrained(tmp_path / f"g{i}")
        experts[f"g{i}"] = tmp_path / f"g{i}"
    weights = {"g0": 0.7, "g1": 0.3}
    reference_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"), experts["g0"],
                                                adapter_name="g0")
    reference_model.load_adapter(experts["g1"], adapter_name="g1")
    reference_model.add_weighted_adapter(["g0", "g1"], [0.7, 0.3], "mix", combination_type="cat")
    reference_model.set_adapter("mix")
    reference = reference_model.merge_and_unload().state_dict()
    plan = plan_for(tmp_path / "gpt2", experts)
    method = MergeMethod()
    mixture = plan.mixture(weights, method)
    export_full(plan, mixture, method, tmp_path / "merged")
    export_lora(plan, mixture, method, tmp_path / "lora")
    on_disk = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").state_dict()
    adapter = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"), tmp_path / "lora")
    one_adapter = adapter.merge_and_unload().state_dict()
    merger = InPlaceMerger(GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"), plan)
    merger.merge(mixture)
    in_memory = merger.model.state_dict()
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").state_dict()
    assert sum(not torch.equal(reference[k], base[k]) for k in reference) == 2
    for key in reference:
        for ours in (on_disk, one_adapter, in_memory):
            assert_close_rel(ours[key], reference[key], name=key)


def test_a_folder_whose_name_holds_an_equals_sign_is_a_source(tmp_path):
    """LLaMA-Factory output_dirs like saves/lr=1e-4/ocr: the text is a path, not NAME=SOURCE."""
    folder = tmp_path / "lr=1e-4" / "ocr"
    folder.mkdir(parents=True)
    assert ExpertSpec.parse(str(folder)) == ExpertSpec(source=str(folder))
    assert ExpertSpec.parse(f"ocr={folder}") == ExpertSpec(source=str(folder), name="ocr")


def test_a_sweep_submitter_lets_sighup_go_by():
    """Ctrl-C or SIGTERM to `merge-proxy sweep` cancels the SLURM jobs it waits for; a dropped ssh
    session (SIGHUP) must not: the sweep does not turn SIGHUP into an interrupt, merge does."""
    import signal

    from merge_proxy.cli import _terminate_as_interrupt, build_parser

    parser = build_parser()
    assert getattr(parser.parse_args(["sweep", "r.yaml"]), "unwind_on_sighup", False) is False
    assert parser.parse_args(["merge", "--base", "b", "--expert", "a=x", "--weights", "a=1", "--out", "o"]).unwind_on_sighup
    before = signal.getsignal(signal.SIGHUP)
    restore = _terminate_as_interrupt(hangup=False)
    try:
        assert signal.getsignal(signal.SIGHUP) is before
    finally:
        restore()
