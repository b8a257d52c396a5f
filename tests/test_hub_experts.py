"""Experts fetched from a Hub (the emulator) by repo@revision: pinned shas, minimal downloads, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge_proxy.engine import MergeMethod, build_plan
from merge_proxy.errors import MergeProxyError
from merge_proxy.experts import ExpertSpec, pin_source, resolve, resolve_experts, resolve_merge_inputs
from merge_proxy.export import export_full
from merge_proxy.hub import HubOptions

pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]
SCRIPTS = Path(sys.executable).parent


def upload(api, folder: Path, repo_id: str, private: bool = False, extra: dict[str, bytes] | None = None) -> str:
    api.create_repo(repo_id, private=private, exist_ok=True)
    for name, data in (extra or {}).items():
        api.upload_file(path_or_fileobj=data, path_in_repo=name, repo_id=repo_id)
    # PEFT's README names the local base path, which the Hub (and the emulator) rejects as base_model.
    return api.upload_folder(repo_id=repo_id, folder_path=folder, ignore_patterns=["README.md"]).oid


@pytest.fixture
def hub(hub_emulator, tmp_path):
    return HubOptions(endpoint=hub_emulator.endpoint, token=hub_emulator.token, cache_dir=tmp_path / "hf-cache")


def test_resolves_by_branch_and_sha_and_fetches_only_needed_files(tmp_path, hub_api, hub, tiny_vlm, lora_experts, full_experts):
    junk = {"optimizer.pt": b"\0" * 1024, "training_args.bin": b"pickle"}
    sha_a = upload(hub_api, lora_experts["a"], "tester/expert-a", extra=junk)
    sha_f = upload(hub_api, full_experts["f2"], "tester/expert-f", private=True)
    upload(hub_api, tiny_vlm.path, "tester/qwen2-vl-tiny")

    [a, f] = resolve_experts(["a=tester/expert-a@main", f"f=tester/expert-f@{sha_f}"], hub=hub)
    assert (a.kind, a.revision, a.repo_id) == ("lora", sha_a, "tester/expert-a")
    assert (f.kind, f.revision) == ("full", sha_f)
    assert sorted(p.name for p in a.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not any(p.name in junk for p in f.path.iterdir())
    assert len(list(f.path.glob("model-*.safetensors"))) > 1

    base = resolve(ExpertSpec.parse("tester/qwen2-vl-tiny"), for_base=True, hub=hub)
    assert (base.path / "tokenizer.json").is_file() and (base.path / "processor_config.json").is_file()
    plan = build_plan(base, [a, f])
    method = MergeMethod()
    export_full(plan, plan.mixture({"a": 0.5, "f": 0.5}, method), method, tmp_path / "merged")
    record = json.loads((tmp_path / "merged" / "merge_proxy.json").read_text())
    assert [e["pinned"] for e in record["experts"]] == [f"tester/expert-a@{sha_a}", f"tester/expert-f@{sha_f}"]
    readme = (tmp_path / "merged" / "README.md").read_text()
    assert "- tester/qwen2-vl-tiny" in readme and "- tester/expert-a" in readme  # base_model: list of Hub ids
    assert sha_a in readme and sha_f in readme  # the resolved revisions, in the card too


def test_a_commit_sha_pins_old_weights(tmp_path, hub_api, hub, lora_experts):
    first = upload(hub_api, lora_experts["a"], "tester/moving")
    upload(hub_api, lora_experts["b"], "tester/moving")  # main moves on
    [old] = resolve_experts([f"x=tester/moving@{first}"], hub=hub)
    [new] = resolve_experts(["x=tester/moving"], hub=hub)
    assert old.revision == first and new.revision != first
    original = load_file(lora_experts["a"] / "adapter_model.safetensors")
    fetched = load_file(old.path / "adapter_model.safetensors")
    assert all(torch.equal(original[k], fetched[k]) for k in original)


def test_intermediate_checkpoints_and_logs_are_not_fetched(hub_api, hub, tiny_vlm, lora_experts, full_experts):
    """LLaMA-Factory pushes checkpoint-N/ folders (GBs each for a full fine-tune) and runs/ beside the model."""
    upload(hub_api, full_experts["f2"], "tester/full",
           extra={"checkpoint-100/model.safetensors": b"\0" * 4096, "checkpoint-100/config.json": b"{}"})
    upload(hub_api, lora_experts["a"], "tester/lora",
           extra={"checkpoint-50/adapter_model.safetensors": b"\0" * 64, "checkpoint-50/adapter_config.json": b"{}"})
    upload(hub_api, tiny_vlm.path, "tester/base",
           extra={"checkpoint-9/model.safetensors": b"\0" * 64, "runs/x/events.json": b"{}"})
    upload(hub_api, tiny_vlm.path, "tester/trained-base", extra={"trainer_state.json": b"{}"})
    base, experts = resolve_merge_inputs(ExpertSpec.parse("tester/base"), ["f=tester/full", "a=tester/lora"], hub=hub)
    for model in (base, *experts):
        assert [p.name for p in model.path.iterdir() if p.is_dir()] == [], model.name
    assert (base.path / "tokenizer.json").is_file() and len(list(experts[0].path.glob("model-*.safetensors"))) > 1
    # --format lora reads the base's config only: its weights and training logs stay on the Hub.
    base, _ = resolve_merge_inputs(ExpertSpec.parse("tester/trained-base"), ["a=tester/lora"], hub=hub, lora_only=True)
    assert (base.path / "config.json").is_file() and (base.path / "tokenizer.json").is_file()
    assert not list(base.path.glob("*.safetensors")) and not (base.path / "trainer_state.json").exists()


def test_sources_are_pinned_to_commits_without_downloading(hub_api, hub, lora_experts):
    """What a sweep's submitter hands its SLURM shards: branches become the commit they point at now."""
    first = upload(hub_api, lora_experts["a"], "tester/moving")
    assert pin_source("tester/moving", hub) == f"tester/moving@{first}"
    upload(hub_api, lora_experts["b"], "tester/moving")  # main moves on; the pin does not
    assert pin_source(f"tester/moving@{first}", hub) == f"tester/moving@{first}"
    assert pin_source("tester/moving@main", hub) != f"tester/moving@{first}"
    assert pin_source(str(lora_experts["a"]), hub) == str(lora_experts["a"])
    # The SLURM submitter pins the base before queueing: a local folder not built yet fails there, saying so
    with pytest.raises(MergeProxyError, match=r"no directory 'checkpoints/base_models/X' in .*, and as a Hub "
                                              r"source: repository checkpoints/base_models not found"):
        pin_source("checkpoints/base_models/X", hub)
    assert not list(Path(hub.cache_dir).rglob("*.safetensors"))


def test_a_repo_of_model_folders_names_them(hub_api, hub, lora_experts):
    hub_api.create_repo("tester/mixtures")
    hub_api.upload_folder(repo_id="tester/mixtures", folder_path=lora_experts["a"], path_in_repo="general-0.5",
                          ignore_patterns=["README.md"])
    with pytest.raises(MergeProxyError, match=r"its folders: general-0.5: name one as ORG/NAME/FOLDER"):
        resolve_experts(["x=tester/mixtures"], hub=hub)
    [expert] = resolve_experts(["x=tester/mixtures/general-0.5"], hub=hub)
    assert expert.kind == "lora" and (expert.path / "adapter_model.safetensors").is_file()


def test_every_source_is_checked_before_the_first_download(hub_api, hub, tiny_vlm, lora_experts, full_experts):
    upload(hub_api, tiny_vlm.path, "tester/base")
    upload(hub_api, lora_experts["a"], "tester/lora")
    upload(hub_api, full_experts["f2"], "tester/full")
    with pytest.raises(MergeProxyError, match="repository tester/typo not found"):
        resolve_merge_inputs(ExpertSpec.parse("tester/base"), ["a=tester/lora", "t=tester/typo"], hub=hub)
    with pytest.raises(MergeProxyError, match="--format lora needs LoRA experts only; f is a full checkpoint"):
        resolve_merge_inputs(ExpertSpec.parse("tester/base"), ["a=tester/lora", "f=tester/full"], hub=hub, lora_only=True)
    with pytest.raises(MergeProxyError, match="base model 'tester/lora' is a LoRA adapter"):
        resolve_merge_inputs(ExpertSpec.parse("tester/lora"), ["f=tester/full"], hub=hub)
    cache = Path(hub.cache_dir)
    assert [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts] == []
    # A sweep reads the base's architecture (its default backend) from the config alone.
    from merge_proxy.experts import resolve
    from merge_proxy.lmms_model import default_backend

    config_only = resolve(ExpertSpec.parse("tester/base"), for_base=True, weights=False, hub=hub)
    assert default_backend(config_only) == "qwen2_vl"
    assert not list(cache.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "source, message",
    [
        ("x=tester/secret", "repository tester/secret not found on http://127.0.0.1:.*or private.*HF_TOKEN"),
        ("x=tester/public@nope", "revision 'nope' of tester/public not found"),
        ("x=no-such-dir/and-no-repo", "no directory 'no-such-dir/and-no-repo' in .*, and as a Hub source: "
                                      "repository no-such-dir/and-no-repo not found"),
        # a local folder not built yet (the reference's converted InternVL base) reads as repo + subfolder
        ("x=checkpoints/base_models/InternVL3_5-2B-Pretrained-HF",
         "no directory 'checkpoints/base_models/InternVL3_5-2B-Pretrained-HF' in .*repository checkpoints/base_models "
         "not found"),
        ("x=./not/a/dir/../x", "neither an existing directory nor a Hub repo id"),
    ],
)
def test_resolution_errors(hub_api, hub_emulator, tmp_path, lora_experts, source, message):
    upload(hub_api, lora_experts["a"], "tester/secret", private=True)
    upload(hub_api, lora_experts["a"], "tester/public")
    anonymous = HubOptions(endpoint=hub_emulator.endpoint, token=None, cache_dir=tmp_path / "c")
    with pytest.raises(MergeProxyError, match=message):
        resolve_experts([source], hub=anonymous)


def test_cli_merge_and_lmms_eval_fetch_experts_from_the_hub(tmp_path, hub_api, hub_emulator, tiny_vlm, domains, lora_experts):
    """Production code talks to the emulator only through HF_ENDPOINT / HF_TOKEN, as to huggingface.co."""
    from merge_proxy.testing.lmms import run_lmms_eval

    sha_a = upload(hub_api, lora_experts["a"], "tester/expert-a", private=True)
    upload(hub_api, lora_experts["b"], "tester/expert-b")
    env = hub_emulator.client_env(hf_home=tmp_path / "hf-home")
    out = tmp_path / "merged"
    proc = subprocess.run(
        [str(SCRIPTS / "merge-proxy"), "merge", "--base", str(tiny_vlm.path), "--expert", f"a=tester/expert-a@{sha_a}",
         "--expert", "b=tester/expert-b@main", "--weights", "a=0.3,b=0.7", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    assert hub_emulator.token not in proc.stdout + proc.stderr + (out / "README.md").read_text()

    # lmms-eval 0.7.3 logs HF_TOKEN from the environment ("Evaluation tracker args"); a saved login
    # (what `hf auth login` writes) authenticates the same without putting the token in any log.
    login_env = {k: v for k, v in env.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    (tmp_path / "hf-home" / "token").write_text(hub_emulator.token)
    task = domains.tasks["color"]
    proxy = run_lmms_eval(
        "merge_proxy",
        f"pretrained={tiny_vlm.path},experts=a=tester/expert-a@{sha_a};b=tester/expert-b@main,"
        "weights=a=0.3;b=0.7,device_map=cpu,device=cpu",
        [task], tmp_path / "proxy", include_path=domains.lmms_eval_dir,
        env={**login_env, "HF_TOKEN": ""},
    )
    stock = run_lmms_eval("qwen2_vl", f"pretrained={out},device_map=cpu,device=cpu", [task], tmp_path / "stock",
                          include_path=domains.lmms_eval_dir)
    assert [s["filtered_resps"] for s in proxy.samples(task)] == [s["filtered_resps"] for s in stock.samples(task)]
    assert hub_emulator.token not in proxy.log


def test_hub_http_errors_are_one_line_with_the_servers_message(tmp_path, hub_emulator):
    """huggingface_hub's HTTP errors span lines (status, a docs link, the server's text): the CLI prints
    one line, so the explanation keeps the status and the server's message only."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from merge_proxy.hub import explain_error

    api = HfApi(endpoint=hub_emulator.endpoint, token=hub_emulator.token)
    with pytest.raises(HfHubHTTPError) as caught:  # the emulator answers 404 to an endpoint it lacks
        api.list_repo_refs("tester/none-such", repo_type="space")
    assert len(str(caught.value).strip().splitlines()) > 1
    message = str(explain_error(caught.value, "tester/none-such", None, HubOptions(endpoint=hub_emulator.endpoint)))
    assert "\n" not in message and message.startswith(f"{hub_emulator.endpoint} refused a request for tester/none-such")
