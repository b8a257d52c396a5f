"""expert.json: one record type read and written by training, publishing and the expert resolver.

Documents published by earlier releases must read back unchanged (experts on the Hub outlive the
release that wrote them), and a file that is not ours must not break a merge.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from merge_proxy.errors import ConfigError
from merge_proxy.expert_metadata import (
    EXPERT_METADATA_FILE, ExpertMetadata, read_expert_metadata, write_expert_metadata,
)
from merge_proxy.experts import ExpertError, ExpertSpec, resolve
from merge_proxy.republish import publish_directory

pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]

#: expert.json as `merge-proxy train` wrote it before the record became a dataclass (the demo's shape
#: expert, release 0.1.0.dev0 at 36589ad; target modules shortened).
PUBLISHED = {
    "schema": "merge-proxy/expert", "schema_version": 1, "domain": "shape", "artifact": "adapter",
    "base_model": {"id": "tester/tiny-qwen2-vl", "path": "/tmp/demo/base", "revision": None},
    "datasets": [{"name": "synth_shape", "rows": 48, "hub_id": None, "file": "synth_shape_train.json",
                  "file_rows": 48}],
    "samples": 48,
    "mixing": {"mix_strategy": "concat", "interleave_probs": None, "max_samples": None, "val_size": None},
    "finetuning_type": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "use_rslora": False, "use_dora": False,
             "target_modules": ["model.language_model.layers.0.mlp.down_proj",
                                "model.language_model.layers.0.self_attn.q_proj"]},
    "template": "qwen2_vl", "cutoff_len": 128, "learning_rate": 0.01, "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1, "num_train_epochs": 1.0, "max_steps": 100,
    "training": {"global_steps": 100, "epochs": 8.333333333333334, "final_loss": 0.4271153509616852,
                 "train_loss": 1.1652114367485047, "train_runtime_s": 44.196, "global_batch_size": 4,
                 "train_samples": 48, "samples_seen": 400},
    "seed": 0,
    "versions": {"llamafactory": "0.9.5", "transformers": "5.6.0", "peft": "0.18.1", "torch": "2.10.0",
                 "merge-proxy": "0.1.0.dev0"},
}


def test_a_published_document_reads_back_and_writes_byte_for_byte(tmp_path):
    record = ExpertMetadata.from_json(PUBLISHED, "expert.json")
    assert (record.domain, record.base_model.names, record.lora.r) == ("shape", ("tester/tiny-qwen2-vl", "/tmp/demo/base"), 8)
    assert record.training.samples_seen == 400 and record.datasets[0].rows == 48
    assert record.lora.target_summary == "down_proj, q_proj (2 modules)"
    path = write_expert_metadata(tmp_path, record)
    assert path.read_text() == json.dumps(PUBLISHED, indent=2) + "\n"  # same keys, same order


def test_keys_a_later_release_adds_survive_a_relabel(tmp_path, hub_emulator, lora_experts):
    """`publish --domain` rewrites the local document: it must not drop what it does not know."""
    from merge_proxy.hub import HubOptions

    out = tmp_path / "expert"
    shutil.copytree(lora_experts["a"], out)
    (out / EXPERT_METADATA_FILE).write_text(json.dumps({**PUBLISHED, "eval": {"loss": 0.3}}))
    hub = HubOptions(endpoint=hub_emulator.endpoint, token=hub_emulator.token, cache_dir=tmp_path / "c")
    publication = publish_directory(out, repo_id="tester/relabelled", domain="shapes", hub=hub)
    local = json.loads((out / EXPERT_METADATA_FILE).read_text())
    assert local == {**PUBLISHED, "domain": "shapes", "eval": {"loss": 0.3}}
    assert publication.expert.domain == "shapes"


@pytest.mark.parametrize(("change", "message"), [
    ({"schema_version": 2}, "has schema_version 2; this merge-proxy reads up to 1: upgrade merge-proxy"),
    ({"schema_version": True}, "(schema_version True, expected a positive integer)"),
    ({"domain": None}, "is not a merge-proxy expert.json (no domain); re-publish"),
    ({"artifact": "gguf"}, '(artifact is a string "gguf", expected adapter or full)'),
    ({"datasets": {"name": "x"}}, "(datasets is an object, expected a list)"),
    ({"datasets": [{"name": "x", "rows": "12"}]}, '(datasets.0.rows is a string "12", expected an integer or null)'),
    ({"schema": "other/thing"}, "(schema 'other/thing', expected 'merge-proxy/expert')"),
    ({"base_model": {"id": 5}}, "(base_model.id is a number 5, expected a string or null)"),
    ({"lora": {"r": 8, "target_modules": 7}}, "(lora.target_modules is a number 7, expected a list of strings or a string or null)"),
    ({"training": {"global_steps": "100"}}, '(training.global_steps is a string "100", expected an integer or null)'),
    ({"training": {"train_loss": True}}, "(training.train_loss is a boolean true, expected a number or null)"),
])
def test_a_damaged_document_names_the_field_and_the_fix(tmp_path, change, message):
    path = tmp_path / EXPERT_METADATA_FILE
    path.write_text(json.dumps({**PUBLISHED, **change}))
    with pytest.raises(ConfigError) as err:
        read_expert_metadata(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_another_tools_expert_json_does_not_break_a_merge_but_ours_damaged_does(tmp_path, lora_experts, caplog):
    out = tmp_path / "expert"
    shutil.copytree(lora_experts["a"], out)
    (out / EXPERT_METADATA_FILE).write_text(json.dumps({"experts": ["moe-0", "moe-1"]}))
    with caplog.at_level(logging.WARNING, logger="merge_proxy.expert_metadata"):
        resolved = resolve(ExpertSpec.parse(str(out)), position=2)
    assert resolved.name == "expert2" and resolved.metadata is None
    assert "is not merge-proxy's (schema None); ignored" in caplog.text

    (out / EXPERT_METADATA_FILE).write_text(json.dumps({**PUBLISHED, "artifact": "gguf"}))
    with pytest.raises(ExpertError, match=r"expert '.*': re-publish the expert \(merge-proxy publish\)"):
        resolve(ExpertSpec.parse(str(out)))
    (out / EXPERT_METADATA_FILE).write_text(json.dumps(PUBLISHED))
    assert resolve(ExpertSpec.parse(str(out))).name == "shape"  # named by its domain
    # a later release's document: a merge reads what it knows (publishing would refuse to rewrite it)
    (out / EXPERT_METADATA_FILE).write_text(json.dumps({**PUBLISHED, "schema_version": 2}))
    with caplog.at_level(logging.WARNING, logger="merge_proxy.expert_metadata"):
        assert resolve(ExpertSpec.parse(str(out))).metadata.base_model.id == "tester/tiny-qwen2-vl"
    assert "written by a newer merge-proxy (schema_version 2); read as version 1" in caplog.text


def test_unknown_keys_inside_records_survive_a_rewrite(tmp_path):
    """A later release may add keys inside base_model, training or a dataset, or a top-level key that
    happens to be called extra: none is lost when this release rewrites the document."""
    later = json.loads(json.dumps(PUBLISHED))
    later["base_model"]["sha256"] = "abc"
    later["training"]["eval_loss"] = 0.5
    later["datasets"][0]["license"] = "cc-by-4.0"
    later["extra"] = {"note": 1}
    record = ExpertMetadata.from_json(later, "expert.json")
    assert record.to_json() == later
    assert record.with_base(id="tester/other").to_json()["base_model"]["sha256"] == "abc"


def test_a_license_is_written_only_when_given():
    """Documents before the field read and write unchanged; one given travels with the record."""
    from dataclasses import replace

    record = ExpertMetadata.from_json(PUBLISHED, "expert.json")
    assert record.license is None and "license" not in record.to_json()
    licensed = ExpertMetadata.from_json(replace(record, license="mit").to_json(), "expert.json")
    assert licensed.license == "mit" and list(licensed.to_json())[-1] == "license"
