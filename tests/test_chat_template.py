"""``chat_template_from``: prompts rendered with another model's chat template (a Qwen2-VL base model
evaluated in the Instruct model's format, as the reference protocol does)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from merge_proxy.chat_template import load_chat_template
from merge_proxy.errors import ConfigError
from merge_proxy.hub import HubOptions
from merge_proxy.testing.lmms import run_lmms_eval
from merge_proxy.testing.tiny_vlm import CHAT_TEMPLATE

pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]
CPU = "device_map=cpu,device=cpu"

#: What a base (not Instruct) Qwen2-VL ships: the messages' text and images, no roles, no system prompt.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
)


def test_reads_the_template_where_transformers_does(tmp_path):
    jinja = tmp_path / "jinja"
    jinja.mkdir()
    (jinja / "chat_template.jinja").write_text("J")
    (jinja / "chat_template.json").write_text(json.dumps({"chat_template": "legacy"}))
    assert load_chat_template(str(jinja)).text == "J"  # the .jinja file wins, as in transformers 5
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "chat_template.json").write_text(json.dumps({"chat_template": "L"}))
    (legacy / "tokenizer_config.json").write_text(json.dumps({"chat_template": "T"}))
    template = load_chat_template(str(legacy))
    assert (template.text, template.pinned_source) == ("L", str(legacy.resolve()))
    named = tmp_path / "named"
    named.mkdir()
    (named / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "X"}, {"name": "default", "template": "D"}]}))
    assert load_chat_template(str(named)).text == "D"
    assert load_chat_template(str(jinja / "chat_template.jinja")).text == "J"
    assert load_chat_template(str(jinja)).fingerprint != load_chat_template(str(legacy)).fingerprint

    (named / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "X"}]}))
    with pytest.raises(ConfigError, match="named chat templates \\(tool_use\\) and no 'default' one"):
        load_chat_template(str(named))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8}))
    with pytest.raises(ConfigError, match="holds no chat template .*e.g. the base's -Instruct version"):
        load_chat_template(str(empty))
    with pytest.raises(ConfigError, match="neither a file, a directory nor a Hub repo id"):
        load_chat_template(str(tmp_path / "no" / "such" / "dir"))


def test_from_the_hub_pins_the_commit_and_fetches_only_the_template(tmp_path, hub_api, hub_emulator, tiny_vlm):
    hub_api.create_repo("tester/instruct")
    sha = hub_api.upload_folder(repo_id="tester/instruct", folder_path=tiny_vlm.path).oid
    hub = HubOptions(endpoint=hub_emulator.endpoint, token=hub_emulator.token, cache_dir=tmp_path / "cache")
    template = load_chat_template("tester/instruct@main", hub)
    assert template.text == (tiny_vlm.path / "chat_template.jinja").read_text()
    assert template.pinned_source == f"tester/instruct@{sha}"
    fetched = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert "model.safetensors" not in fetched and "chat_template.jinja" in fetched
    hub_api.create_repo("tester/weights-only")
    hub_api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="tester/weights-only")
    with pytest.raises(ConfigError, match="'tester/weights-only' holds no chat template"):
        load_chat_template("tester/weights-only", hub)


@pytest.mark.slow
def test_a_base_with_a_plain_template_answers_as_the_export_in_the_instruct_format(tmp_path, tiny_vlm, domains,
                                                                                     lora_experts):
    """The reference situation: a base whose own template has no roles, experts trained in ChatML.
    With chat_template_from, merge_proxy answers exactly as the stock backend on an export that
    carries the ChatML template; without it, the prompts (and answers) differ."""
    assert (tiny_vlm.path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    plain = tmp_path / "plain-base"
    shutil.copytree(tiny_vlm.path, plain)
    (plain / "chat_template.jinja").write_text(PLAIN_TEMPLATE)
    # base_check=false: the experts name the original folder as their base; the copy has its weights
    experts = f"experts=a={lora_experts['a']};b={lora_experts['b']},weights=a=0.4;b=0.6,base_check=false"
    task = domains.tasks["color"]

    def answers(model: str, args: str, name: str) -> dict[int, str]:
        run = run_lmms_eval(model, f"{args},{CPU}", [task], tmp_path / name, include_path=domains.lmms_eval_dir)
        return run.responses(task)

    instructed = answers("merge_proxy", f"pretrained={plain},{experts},chat_template_from={tiny_vlm.path}", "proxy")
    # `merge-proxy merge --chat-template-from` writes the same checkpoint the proxy serves.
    merged = tmp_path / "merged"
    proc = subprocess.run([str(Path(sys.executable).parent / "merge-proxy"), "merge", "--base", str(plain),
                           "--expert", f"a={lora_experts['a']}", "--expert", f"b={lora_experts['b']}",
                           "--weights", "a=0.4,b=0.6", "--no-base-check", "--chat-template-from", str(tiny_vlm.path),
                           "--out", str(merged)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoProcessor, AutoTokenizer

    assert AutoProcessor.from_pretrained(merged).chat_template == CHAT_TEMPLATE
    assert AutoTokenizer.from_pretrained(merged).chat_template == CHAT_TEMPLATE
    assert json.loads((merged / "merge_proxy.json").read_text())["chat_template"]["pinned"] == str(tiny_vlm.path)
    assert instructed == answers("qwen2_vl", f"pretrained={merged}", "stock")
    assert instructed != answers("merge_proxy", f"pretrained={plain},{experts}", "plain")


def test_backends_without_a_chat_template_refuse_it():
    from types import SimpleNamespace

    from merge_proxy.chat_template import ChatTemplate, apply_chat_template

    template = ChatTemplate("T", "x", "x")
    # internvl3_5 prompts through the remote code's model.chat, although its tokenizer has a template
    with pytest.raises(ConfigError, match="backend 'internvl3_5' builds prompts with the model's own"):
        apply_chat_template(SimpleNamespace(tokenizer=SimpleNamespace(chat_template="own")), template, "internvl3_5")
    with pytest.raises(ConfigError, match="backend 'custom' renders prompts without a transformers chat template"):
        apply_chat_template(SimpleNamespace(model=None), template, "custom")
    backend = SimpleNamespace(processor=SimpleNamespace(chat_template="own"), chat_template=None)
    apply_chat_template(backend, template, "llava_hf")
    assert backend.processor.chat_template == backend.chat_template == "T"
