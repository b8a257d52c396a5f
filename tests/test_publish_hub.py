"""`merge-proxy publish` against the Hub emulator, without training: re-publication, retries, base ids.

The experts are the session's random LoRA/full checkpoints (what LLaMA-Factory saves has the same
files); each test copies the one it publishes when publishing may write expert.json beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from merge_proxy.experts import resolve_experts
from merge_proxy.hub import HubOptions
from merge_proxy.republish import publish_directory

pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]
SCRIPTS = Path(sys.executable).parent
BASE_ID = "tester/qwen2-vl-tiny"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "merge-proxy"), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture
def hub(hub_emulator, tmp_path) -> HubOptions:
    return HubOptions(endpoint=hub_emulator.endpoint, token=hub_emulator.token, cache_dir=tmp_path / "hf-cache")


def test_republishing_replaces_the_files_of_the_previous_expert(tmp_path, hub_api, hub, full_experts):
    """A single-file expert published over a sharded one: no old shard or index may survive it."""
    first = publish_directory(full_experts["f2"], repo_id="tester/full-expert", domain="color", base_model=BASE_ID,
                              hub=hub)
    assert "model.safetensors.index.json" in hub_api.list_repo_files("tester/full-expert")
    second = publish_directory(full_experts["f1"], repo_id="tester/full-expert", domain="color", base_model=BASE_ID,
                               hub=hub)

    local = {p.name for p in full_experts["f1"].iterdir() if p.is_file()}
    assert set(hub_api.list_repo_files("tester/full-expert")) == local | {"README.md", "expert.json", ".gitattributes"}
    commits = hub_api.list_repo_commits("tester/full-expert")
    assert [c.commit_id for c in commits[:2]] == [second.commit_sha, first.commit_sha]  # one commit each

    [expert] = resolve_experts(["color=tester/full-expert"], hub=hub)
    assert expert.revision == second.commit_sha
    assert not list(expert.path.glob("model-*.safetensors")) and not (expert.path / "model.safetensors.index.json").exists()
    assert sha(expert.path / "model.safetensors") == sha(full_experts["f1"] / "model.safetensors")


def test_publish_errors_name_the_flags(tmp_path, hub_env, lora_experts):
    """`merge-proxy publish` is a CLI: its errors say which flag to pass, not which YAML key to set."""
    help_text = cli("publish", "--help", env=hub_env).stdout
    assert "(default: expert.json's, if any)" not in help_text  # expert.json holds no repo id
    no_repo = cli("publish", str(lora_experts["a"]), "--domain", "color", "--base-model", BASE_ID, env=hub_env)
    assert no_repo.returncode == 2 and "pass --repo ORG/NAME" in no_repo.stderr and "repo_id:" not in no_repo.stderr
    bad_repo = cli("publish", str(lora_experts["a"]), "--repo", "not a repo", "--domain", "color", env=hub_env)
    assert bad_repo.returncode == 2 and "--repo 'not a repo' is not a Hub repo id" in bad_repo.stderr
    no_base = cli("publish", str(lora_experts["a"]), "--repo", "tester/a", "--domain", "color", env=hub_env)
    assert no_base.returncode == 2 and "pass --base-model ORG/NAME" in no_base.stderr


def test_base_model_flag_lands_in_expert_json_and_the_merge_accepts_the_hub_base(tmp_path, hub_api, hub, tiny_vlm):
    """An expert trained from a local base with push: false names no Hub base; --base-model supplies it."""
    from merge_proxy.engine import build_plan
    from merge_proxy.experts import ExpertSpec, resolve
    from merge_proxy.expert_metadata import TrainingSummary, write_expert_metadata
    from merge_proxy.provenance import PublishSpec, build_expert_metadata
    from merge_proxy.testing.experts import make_lora_expert

    local_base = tmp_path / "checkpoints" / "base"  # a local copy whose name says nothing of the Hub id
    shutil.copytree(tiny_vlm.path, local_base)
    out = make_lora_expert(local_base, tmp_path / "color-expert", seed=4)
    args = {"model_name_or_path": str(local_base), "output_dir": str(out), "finetuning_type": "lora"}
    document = build_expert_metadata(PublishSpec(domain="color", push=False), args, out, TrainingSummary(), None)
    write_expert_metadata(out, document)
    assert document.base_model.id is None

    hub_api.create_repo(BASE_ID)
    hub_api.upload_folder(repo_id=BASE_ID, folder_path=tiny_vlm.path)
    publish_directory(out, repo_id="tester/color2", base_model=BASE_ID, hub=hub)

    published = json.loads(Path(hub_api.hf_hub_download("tester/color2", "expert.json",
                                                        cache_dir=tmp_path / "c")).read_text())
    assert published["base_model"]["id"] == BASE_ID
    assert json.loads((out / "expert.json").read_text()) == published  # the local copy says the same
    base = resolve(ExpertSpec.parse(BASE_ID), for_base=True, hub=hub)
    [expert] = resolve_experts(["color=tester/color2"], hub=hub)
    build_plan(base, [expert])  # the base check accepts the Hub base the expert was published for


def test_a_hub_base_is_pinned_to_the_commit_of_its_branch(tmp_path, hub_api, hub, tiny_vlm, lora_experts):
    """model_revision is a branch (or nothing) when training: expert.json must name the commit."""
    from merge_proxy.expert_metadata import TrainingSummary, write_expert_metadata
    from merge_proxy.provenance import PublishSpec, build_expert_metadata

    hub_api.create_repo(BASE_ID)
    trained_on = hub_api.upload_folder(repo_id=BASE_ID, folder_path=tiny_vlm.path).oid
    hub_api.create_branch(BASE_ID, branch="v1")
    hub_api.upload_file(path_or_fileobj=b"moved on\n", path_in_repo="NOTES.md", repo_id=BASE_ID)  # main moves
    assert hub_api.model_info(BASE_ID).sha != trained_on

    out = tmp_path / "expert"
    shutil.copytree(lora_experts["a"], out)
    args = {"model_name_or_path": BASE_ID, "model_revision": "v1", "output_dir": str(out)}
    document = build_expert_metadata(PublishSpec(domain="color", push=False), args, out, TrainingSummary(), BASE_ID)
    write_expert_metadata(out, document)
    assert document.base_model.revision == "v1"

    publish_directory(out, repo_id="tester/pinned", hub=hub)
    published = json.loads(Path(hub_api.hf_hub_download("tester/pinned", "expert.json",
                                                        cache_dir=tmp_path / "c")).read_text())
    assert published["base_model"]["revision"] == trained_on
    assert json.loads((out / "expert.json").read_text())["base_model"]["revision"] == trained_on
    card = Path(hub_api.hf_hub_download("tester/pinned", "README.md", cache_dir=tmp_path / "c")).read_text()
    assert trained_on in card
    # PEFT (AutoPeftModel, the Hub's "Use this model") loads the base from the adapter config: the Hub
    # id at the commit trained on, not the trainer's path; the local file stays as PEFT saved it
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(Path(hub_api.hf_hub_download(
        "tester/pinned", "adapter_config.json", cache_dir=tmp_path / "c")).parent))
    assert (config.base_model_name_or_path, config.revision) == (BASE_ID, trained_on)
    assert json.loads((out / "adapter_config.json").read_text()) == \
        json.loads((lora_experts["a"] / "adapter_config.json").read_text())


def test_train_pins_a_hub_base_before_training_and_publish_never_guesses_main(tmp_path, hub_api, hub, tiny_vlm,
                                                                             lora_experts, monkeypatch):
    """`merge-proxy train` trains on the commit its revision names at the start; an expert that names no
    revision is published without one (resolving main at publish time could name a later commit)."""
    from merge_proxy.expert_metadata import TrainingSummary, write_expert_metadata
    from merge_proxy.provenance import PublishSpec, build_expert_metadata
    from merge_proxy.publish import pin_training_base

    hub_api.create_repo(BASE_ID)
    first = hub_api.upload_folder(repo_id=BASE_ID, folder_path=tiny_vlm.path).oid
    args = {"model_name_or_path": BASE_ID, "output_dir": str(tmp_path / "out")}
    pinned = pin_training_base(args, hub)
    assert pinned["model_revision"] == first and "model_revision" not in args
    assert pin_training_base(pinned, hub) == pinned  # a sha stays
    local = {"model_name_or_path": str(tiny_vlm.path)}
    assert pin_training_base(local, hub) == local  # a local base is never looked up
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert pin_training_base(args, hub) == args  # offline: as written
    monkeypatch.undo()

    hub_api.upload_file(path_or_fileobj=b"moved on\n", path_in_repo="NOTES.md", repo_id=BASE_ID)  # main moves
    out = tmp_path / "expert"
    shutil.copytree(lora_experts["a"], out)
    document = build_expert_metadata(PublishSpec(domain="color", push=False), {**args, "output_dir": str(out)}, out,
                                 TrainingSummary(), BASE_ID)
    write_expert_metadata(out, document)
    publish_directory(out, repo_id="tester/unpinned", hub=hub)
    published = json.loads(Path(hub_api.hf_hub_download("tester/unpinned", "expert.json",
                                                        cache_dir=tmp_path / "c")).read_text())
    assert published["base_model"]["revision"] is None


def test_the_card_says_when_no_step_loss_was_logged():
    """logging_steps above the steps run: no step loss, but the trainer's mean loss is known."""
    from merge_proxy.expert_metadata import ExpertMetadata, LoraSettings, TrainingSummary
    from merge_proxy.provenance import PublishSpec
    from merge_proxy.publish import render_card

    expert = ExpertMetadata(domain="color", artifact="adapter", lora=LoraSettings(r=8),
                            training=TrainingSummary(global_steps=4, final_loss=None, train_loss=7.29412))
    card = render_card(PublishSpec(domain="color", repo_id="tester/x"), expert, "org/base", "tester/x")
    assert "final loss not logged (mean over the run 7.294) |" in card


def test_an_expert_card_carries_its_base_models_license_unless_told_another(tmp_path, hub_api, hub, tiny_vlm,
                                                                            lora_experts):
    """A fine-tune is bound by its base's license: the card copies it from the base's card on the Hub
    (all three fields of an ``other`` license); --license (expert: license:) overrides it."""
    from huggingface_hub import ModelCard

    from merge_proxy.errors import ConfigError
    from merge_proxy.expert_metadata import TrainingSummary, write_expert_metadata
    from merge_proxy.provenance import PublishSpec, build_expert_metadata

    hub_api.create_repo(BASE_ID)
    hub_api.upload_folder(repo_id=BASE_ID, folder_path=tiny_vlm.path)
    hub_api.upload_file(repo_id=BASE_ID, path_in_repo="README.md", path_or_fileobj=(
        b"---\nlicense: other\nlicense_name: tiny-research\nlicense_link: LICENSE\n---\n# base\n"))
    out = tmp_path / "expert"
    shutil.copytree(lora_experts["a"], out)

    def card(repo: str) -> dict:
        return ModelCard.load(hub_api.hf_hub_download(repo, "README.md", cache_dir=tmp_path / "c")).data.to_dict()

    publish_directory(out, repo_id="tester/inherits", domain="color", base_model=BASE_ID, hub=hub)
    inherited = card("tester/inherits")
    # the base's relative link points into the base's repo, not at a file the expert's lacks
    assert (inherited["license"], inherited["license_name"], inherited["license_link"]) == \
        ("other", "tiny-research", f"{hub.endpoint}/{BASE_ID}/blob/main/LICENSE")
    # the adapter folder holds no processor: the task comes from the base it adapts
    assert inherited["pipeline_tag"] == "image-text-to-text"

    # a license given is kept in expert.json, so re-publishing without the flag keeps it
    write_expert_metadata(out, build_expert_metadata(PublishSpec(domain="color", push=False), {
        "model_name_or_path": str(tiny_vlm.path), "output_dir": str(out)}, out, TrainingSummary(), BASE_ID))
    publish_directory(out, repo_id="tester/told", base_model=BASE_ID, license="mit", hub=hub)
    told = card("tester/told")
    assert told["license"] == "mit" and "license_name" not in told
    assert json.loads((out / "expert.json").read_text())["license"] == "mit"
    publish_directory(out, repo_id="tester/told", hub=hub)
    assert card("tester/told")["license"] == "mit"
    with pytest.raises(ConfigError, match="license must be a Hub license id such as apache-2.0"):
        publish_directory(out, repo_id="tester/told", license="Apache 2.0", hub=hub)
    (out / "expert.json").unlink()

    # a base the Hub cannot show (here: none by that id) leaves the card without a license, not unpublished
    publish_directory(out, repo_id="tester/unknown", domain="color", base_model="tester/no-such-base", hub=hub)
    assert "license" not in card("tester/unknown")
