"""`merge-proxy train` / `publish` / `experts` with the real LLaMA-Factory and the Hub emulator."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from merge_proxy.testing.hub import HubEmulator
from merge_proxy.testing.training import tiny_sft_config

SCRIPTS = Path(sys.executable).parent
BASE_ID = "tester/qwen2-vl-tiny"

pytestmark = pytest.mark.slow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_config(tmp_path: Path, tiny_vlm, domains, out: Path, expert: dict | None, **overrides) -> Path:
    config = tiny_sft_config(tiny_vlm.path, domains.llamafactory_dir, domains.train_datasets["color"], out,
                             max_steps=3, **overrides)
    if expert is not None:
        config["expert"] = expert
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str, env: dict[str, str] | None = None, extra_env: dict[str, str] | None = None):
    full_env = {**os.environ, **(env or {}), **(extra_env or {})}
    return subprocess.run([str(SCRIPTS / "merge-proxy"), *args], capture_output=True, text=True, timeout=600,
                          env=full_env)


@pytest.fixture
def hub(tmp_path):
    with HubEmulator(tmp_path / "hub-data") as emulator:
        yield emulator


def test_train_publishes_one_commit_with_card_and_provenance(tmp_path, tiny_vlm, domains, hub):
    from huggingface_hub import HfApi, ModelCard, hf_hub_download
    from peft import PeftConfig

    env = hub.client_env(hf_home=tmp_path / "hf-home")
    out = tmp_path / "color-expert"
    expert = {"domain": "color", "repo_id": "tester/color-expert", "base_model": BASE_ID, "tags": ["synthetic"]}
    proc = cli("train", str(write_config(tmp_path, tiny_vlm, domains, out, expert)), "seed=7", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert hub.token not in proc.stdout + proc.stderr

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    commits = api.list_repo_commits("tester/color-expert")
    assert [c.title for c in commits] == ["merge-proxy expert: color", "initial commit"]
    info = api.model_info("tester/color-expert", files_metadata=True)
    assert info.private is True
    published = {s.rfilename for s in info.siblings} - {".gitattributes"}
    local = {p.name for p in out.iterdir() if p.is_file()} - {"README.md", "training_args.bin"}
    assert published == local | {"README.md"}
    for name in local - {"adapter_config.json"}:  # byte-identical to what LLaMA-Factory (and our callback) wrote
        fetched = hf_hub_download("tester/color-expert", name, endpoint=hub.endpoint, token=hub.token,
                                  cache_dir=tmp_path / "c")
        assert sha(Path(fetched)) == sha(out / name), name
    # The adapter names its Hub base, not the local path it was trained from (PEFT loads the base from
    # there); the local file is left as LLaMA-Factory wrote it.
    config = PeftConfig.from_pretrained(str(Path(hf_hub_download(
        "tester/color-expert", "adapter_config.json", endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "c",
    )).parent))
    local_config = json.loads((out / "adapter_config.json").read_text())
    assert local_config["base_model_name_or_path"] == str(tiny_vlm.path)
    assert (config.base_model_name_or_path, config.r, sorted(config.target_modules)) == \
        (BASE_ID, local_config["r"], sorted(local_config["target_modules"]))

    card = ModelCard.load(hf_hub_download("tester/color-expert", "README.md", endpoint=hub.endpoint,
                                          token=hub.token, cache_dir=tmp_path / "c"))
    assert card.data.base_model == BASE_ID
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "image-text-to-text"
    assert {"merge-proxy-expert", "merge-proxy-domain:color", "llama-factory", "lora", "synthetic"} <= set(card.data.tags)
    assert f"base_model:adapter:{BASE_ID}" in info.tags
    assert hub.token not in card.content

    document = json.loads((out / "expert.json").read_text())
    rows = len(json.loads((domains.llamafactory_dir / "synth_color_train.json").read_text()))
    assert document["samples"] == rows == domains.train_size
    assert document["datasets"][0]["rows"] == rows
    assert document["lora"]["r"] == 8 and len(document["lora"]["target_modules"]) == 14
    assert document["training"]["global_steps"] == 3 and document["seed"] == 7
    trainer = json.loads((out / "train_results.json").read_text())  # what LLaMA-Factory saved of the run
    assert document["training"]["train_loss"] == trainer["train_loss"]
    assert f"final loss {document['training']['final_loss']} (mean over the run {trainer['train_loss']:.4g})" \
        in card.content
    assert document["versions"]["llamafactory"] == "0.9.5"
    assert hub.token not in json.dumps(document)

    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    assert [m.id for m in anonymous.list_models(filter="merge-proxy-expert")] == []
    listing = cli("experts", "--base", BASE_ID, "--domain", "color", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert row == {"repo": "tester/color-expert", "domain": "color", "base": BASE_ID, "kind": "lora", "rank": 8,
                   "samples": rows, "sha": commits[0].commit_id}
    table = cli("experts", env=env)
    assert "tester/color-expert" in table.stdout and "color" in table.stdout
    nothing = cli("experts", "--domain", "ocr", env=env)
    assert nothing.stdout.strip() == ("no experts found for --domain ocr; check the ids (merge-proxy experts alone "
                                      "lists every expert you can see)")
    # a recipe's query for a domain nobody published names the domains there are
    recipe = tmp_path / "query.yaml"
    recipe.write_text(yaml.safe_dump({"name": "q", "base": BASE_ID, "experts": {"query": {
        "base": BASE_ID, "domains": ["color", "colr"]}}, "mixtures": [{"grid": {"step": 0.5}}], "benchmarks": ["t"]}))
    typo = cli("sweep", str(recipe), "--dry-run", env=env)
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1].endswith(
        f"{recipe}: experts query found no expert for domain 'colr'; the experts it finds cover color")


def test_failed_push_keeps_outputs_then_publish_succeeds(tmp_path, tiny_vlm, domains):
    from huggingface_hub import HfApi, hf_hub_download

    data = tmp_path / "hub-data"
    with HubEmulator(data) as hub:
        env = hub.client_env(hf_home=tmp_path / "hf-home")
    # The emulator is stopped: the push must fail after training, with the outputs intact.
    out = tmp_path / "shape-expert"
    expert = {"domain": "color", "repo_id": "tester/color-expert", "base_model": BASE_ID,
              "tags": ["paper-reproduction"], "private": False, "revision": "r16-run2", "license": "cc-by-4.0"}
    proc = cli("train", str(write_config(tmp_path, tiny_vlm, domains, out, expert)), env=env)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "publishing tester/color-expert failed" in last and f"merge-proxy publish {out}" in last
    assert (out / "adapter_model.safetensors").is_file() and (out / "expert.json").is_file()
    before = {p.name: sha(p) for p in out.iterdir() if p.is_file()}

    retry = shlex.split(last.split("retry with: ", 1)[1])
    assert retry[:2] == ["merge-proxy", "publish"]
    with HubEmulator(data) as hub:  # the Hub is back: retry with the printed command, as a user would
        proc = cli(*retry[1:], env=hub.client_env(hf_home=tmp_path / "h"))
        assert proc.returncode == 0, proc.stderr
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        commits = api.list_repo_commits("tester/color-expert", revision="r16-run2")
        assert [c.title for c in commits][0] == "merge-proxy expert: color"
        info = api.model_info("tester/color-expert", revision="r16-run2")
        assert info.private is False  # the YAML said private: false
        assert {"merge-proxy-domain:color", "paper-reproduction", "license:cc-by-4.0"} <= set(info.tags)
        assert "expert.json" not in api.list_repo_files("tester/color-expert")  # main untouched
        assert {p.name: sha(p) for p in out.iterdir() if p.is_file()} == before
        # a domain relabelled at publication: the same provenance under the new name, here and there
        old_doc = json.loads((out / "expert.json").read_text())
        relabel = cli("publish", str(out), "--repo", "tester/colour-expert", "--domain", "colour",
                      env=hub.client_env(hf_home=tmp_path / "h"))
        assert relabel.returncode == 0, relabel.stderr
        local = json.loads((out / "expert.json").read_text())
        assert local == {**old_doc, "domain": "colour"}
        published = hf_hub_download("tester/colour-expert", "expert.json", endpoint=hub.endpoint, token=hub.token,
                                    cache_dir=tmp_path / "c")
        assert json.loads(Path(published).read_text()) == local


def test_publish_an_expert_trained_without_merge_proxy(tmp_path, tiny_vlm, domains, hub):
    from huggingface_hub import HfApi

    out = tmp_path / "plain"
    cfg = write_config(tmp_path, tiny_vlm, domains, out, None)
    trained = subprocess.run([str(SCRIPTS / "llamafactory-cli"), "train", str(cfg)], capture_output=True, text=True,
                             timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    env = hub.client_env(hf_home=tmp_path / "hf-home")
    missing = cli("publish", str(out), "--repo", "tester/plain", env=env)
    assert missing.returncode == 2 and "pass --domain D" in missing.stderr
    local_base = cli("publish", str(out), "--repo", "tester/plain", "--domain", "color", env=env)
    assert local_base.returncode == 2 and "pass --base-model ORG/NAME" in local_base.stderr
    ok = cli("publish", str(out), "--repo", "tester/plain", "--domain", "color", "--base-model", BASE_ID,
             "--config", str(cfg), "--public", env=env)
    assert ok.returncode == 0, ok.stderr
    fetched = HfApi(endpoint=hub.endpoint).hf_hub_download("tester/plain", "expert.json", cache_dir=tmp_path / "c")
    document = json.loads(Path(fetched).read_text())
    assert document["domain"] == "color" and document["samples"] == domains.train_size
    assert document["template"] == "qwen2_vl" and document["training"]["global_steps"] == 3
    assert not (out / "expert.json").exists()  # publishing reads the output directory, never rewrites it


def test_without_expert_block_same_adapter_as_llamafactory_cli(tmp_path, tiny_vlm, domains):
    ours = tmp_path / "ours"
    theirs = tmp_path / "theirs"
    proc = cli("train", str(write_config(tmp_path, tiny_vlm, domains, ours, None)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = subprocess.run([str(SCRIPTS / "llamafactory-cli"), "train",
                          str(write_config(tmp_path, tiny_vlm, domains, theirs, None))],
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0
    assert sha(ours / "adapter_model.safetensors") == sha(theirs / "adapter_model.safetensors")
    assert not (ours / "expert.json").exists()


def test_torchrun_two_cpu_processes_make_exactly_one_commit(tmp_path, tiny_vlm, domains, hub):
    from huggingface_hub import HfApi

    env = hub.client_env(hf_home=tmp_path / "hf-home")
    out = tmp_path / "ddp"
    expert = {"domain": "color", "repo_id": "tester/ddp-expert", "base_model": BASE_ID}
    proc = cli("train", str(write_config(tmp_path, tiny_vlm, domains, out, expert)), env=env,
               extra_env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size: 2" in proc.stdout + proc.stderr
    commits = HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_commits("tester/ddp-expert")
    assert [c.title for c in commits] == ["merge-proxy expert: color", "initial commit"]
    document = json.loads((out / "expert.json").read_text())
    assert document["training"]["global_batch_size"] == 2 * 4


@pytest.mark.parametrize(
    "expert, message",
    [
        ({"repo_id": "tester/x"}, "expert: needs domain:"),
        ({"domain": "color", "repo_id": "tester/x", "colour": 1}, "unknown key(s) colour"),
        ({"domain": "color"}, "needs repo_id:"),
        ({"domain": "color", "repo_id": "not a repo"}, "is not a Hub repo id"),
        ({"domain": "color", "repo_id": "tester/x"}, "is a local path; add base_model:"),
        ({"domain": "color", "push": False, "artifact": "full"}, "artifact: full contradicts finetuning_type: lora"),
        ({"domain": "color", "repo_id": "tester/x", "push": "nope"}, "expert: push must be true or false, not 'nope'"),
        ({"domain": "color", "push": False, "private": 2}, "expert: private must be true or false, not 2"),
        ({"domain": "color", "push": False, "license": 3}, "expert: license must be a Hub license id such as apache-2.0"),
    ],
)
def test_expert_block_errors_before_training(tmp_path, tiny_vlm, domains, expert, message):
    out = tmp_path / "never"
    proc = cli("train", str(write_config(tmp_path, tiny_vlm, domains, out, expert)))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


DIRECT_USE = """
import sys, yaml
from llamafactory.train.tuner import run_exp
from merge_proxy.callback import ExpertPublisher
from merge_proxy.provenance import PublishSpec

args = yaml.safe_load(open(sys.argv[1]))
args.pop("expert")
publisher = ExpertPublisher(PublishSpec(domain="color", repo_id="tester/direct", base_model=sys.argv[2]), args)
run_exp(args=args, callbacks=[publisher])  # raises: nothing may be published, not even at exit
publisher.finish()
"""


def test_a_run_that_fails_after_the_last_step_publishes_nothing(tmp_path, tiny_vlm, domains, hub):
    """on_train_end fires before LLaMA-Factory saves metrics; a failure there must not publish at exit."""
    from huggingface_hub import HfApi

    env = hub.client_env(hf_home=tmp_path / "hf-home")
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    for repo, run in (("tester/color-expert", "cli"), ("tester/direct", "callback")):
        out = tmp_path / f"failing-{run}"
        (out / "train_results.json").mkdir(parents=True)  # save_metrics fails after save_model
        cfg = write_config(tmp_path, tiny_vlm, domains, out, {"domain": "color", "repo_id": repo, "base_model": BASE_ID})
        if run == "cli":
            proc = cli("train", str(cfg), env=env)
        else:
            proc = subprocess.run([sys.executable, "-c", DIRECT_USE, str(cfg), BASE_ID], capture_output=True,
                                  text=True, timeout=600, env={**os.environ, **env})
        assert proc.returncode != 0, proc.stderr[-2000:]
        assert "IsADirectoryError" in proc.stderr and (out / "adapter_model.safetensors").is_file()
        assert not api.repo_exists(repo), run
        assert "nothing published" in proc.stderr, proc.stderr[-2000:]


def test_sample_counts_are_what_was_trained(tmp_path, tiny_vlm, domains):
    """dataset_info.json's num_samples and val_size change what LLaMA-Factory trains on; expert.json says so."""
    data = tmp_path / "data"
    shutil.copytree(domains.llamafactory_dir, data)
    info = json.loads((data / "dataset_info.json").read_text())
    info["color_12"] = {**info[domains.train_datasets["color"]], "num_samples": 12}  # 12 of the file's rows
    (data / "dataset_info.json").write_text(json.dumps(info))
    out = tmp_path / "sampled"
    config = tiny_sft_config(tiny_vlm.path, data, "color_12", out, max_steps=2, val_size=0.25)
    config["expert"] = {"domain": "color", "push": False}
    path = tmp_path / "sampled.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = cli("train", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]

    document = json.loads((out / "expert.json").read_text())
    [use] = document["datasets"]
    assert (use["rows"], use["file_rows"]) == (12, domains.train_size)
    assert document["samples"] == document["training"]["train_samples"] == 12 - 3  # datasets' train_test_split holds out ceil(0.25 * 12)
    assert document["mixing"]["val_size"] == 0.25


def test_torchrun_is_launched_as_llamafactory_launches_it(tmp_path, monkeypatch):
    """The re-launch mirrors llamafactory/launcher.py: USE_MCA forces torchrun, RDZV_ID makes an elastic
    launch, OPTIM_TORCH (default on) sets the allocator and NCCL variables."""
    from merge_proxy.train import _torchrun_command, _torchrun_env, _use_torchrun

    for var in ("FORCE_TORCHRUN", "USE_MCA", "RDZV_ID", "MIN_NNODES", "MAX_NNODES", "OPTIM_TORCH"):
        monkeypatch.setenv(var, "0")  # recorded first, so teardown restores it (USE_MCA sets FORCE_TORCHRUN)
        monkeypatch.delenv(var)
    monkeypatch.setenv("MASTER_PORT", "29555")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    assert not _use_torchrun()  # this machine has no accelerator
    monkeypatch.setenv("USE_MCA", "1")
    assert _use_torchrun()
    job = tmp_path / "job.json"
    plain = _torchrun_command(job)
    assert plain[plain.index("--nproc_per_node") + 1] == "2" and "--rdzv-id" not in plain
    assert plain[-3:] == ["-m", "merge_proxy.train", str(job)]
    monkeypatch.setenv("RDZV_ID", "run7")
    monkeypatch.setenv("MIN_NNODES", "2")
    monkeypatch.setenv("MAX_NNODES", "4")
    monkeypatch.setenv("MAX_RESTARTS", "3")
    elastic = _torchrun_command(job)
    flags = dict(zip(elastic[3:-3:2], elastic[4:-3:2]))
    assert flags == {"--nnodes": "2:4", "--nproc-per-node": "2", "--rdzv-id": "run7", "--rdzv-backend": "c10d",
                     "--rdzv-endpoint": "127.0.0.1:29555", "--max-restarts": "3"}
    env = _torchrun_env()
    assert (env["PYTORCH_CUDA_ALLOC_CONF"], env["TORCH_NCCL_AVOID_RECORD_STREAMS"]) == ("expandable_segments:True", "1")
    monkeypatch.setenv("OPTIM_TORCH", "0")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert "PYTORCH_CUDA_ALLOC_CONF" not in _torchrun_env()


def test_quoted_true_and_false_in_the_expert_block_mean_what_they_say():
    """``push: "false"`` is a string, and bool("false") is True: it must not publish."""
    from merge_proxy.provenance import PublishSpec

    spec = PublishSpec.from_block({"domain": "color", "push": "false", "private": " No "})
    assert spec.push is False and spec.private is False
    assert PublishSpec.from_block({"domain": "color", "repo_id": "tester/x", "push": "true"}).push is True
