"""Evaluate with another model's chat template (``chat_template_from``).

A base model's own chat template is often not the format its experts were trained in: Qwen2-VL-2B
(base) ships a plain template without roles, while LLaMA-Factory's ``qwen2_vl`` template trains
experts in the Instruct model's ChatML format. The reference protocol therefore evaluates base-derived
models with the Instruct model's ``chat_template.json``. lmms-eval's wrappers render prompts with the
processor's (or tokenizer's) template, so the template is swapped there after the wrapper loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge_proxy.errors import ConfigError
from merge_proxy.hub import HubOptions, fetch_snapshot, looks_like_repo_id, repo_files, split_revision

logger = logging.getLogger(__name__)

#: lmms-eval backends that prompt through remote code (``model.chat``) and ignore the tokenizer's template.
OWN_PROMPT_BACKENDS = frozenset({"internvl3_5"})
#: Where transformers 5 looks for a chat template, in its order of precedence.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    source: str
    pinned_source: str
    """``repo@sha`` for a Hub source, the absolute path for a local one."""

    @property
    def fingerprint(self) -> str:
        """What response caches and journals record: the template's own bytes decide the prompts."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]


def load_chat_template(source: str, hub: HubOptions | None = None) -> ChatTemplate:
    """The chat template of a model directory, a Hub repo[@rev] or a ``.jinja`` file; only the
    template files are downloaded (a few KB, never weights)."""
    path = Path(source).expanduser()
    if path.is_file():
        return ChatTemplate(path.read_text(encoding="utf-8"), source, str(path.resolve()))
    if path.is_dir():
        return ChatTemplate(_read_template(path, source), source, str(path.resolve()))
    repo_id, revision = split_revision(source)
    if not looks_like_repo_id(repo_id):
        raise ConfigError(
            f"chat_template_from={source!r} is neither a file, a directory nor a Hub repo id (ORG/NAME[@REV])"
        )
    hub = hub or HubOptions()
    sha, files = repo_files(repo_id, revision, hub)
    present = [f for f in TEMPLATE_FILES if f in files]
    if not present:
        raise _no_template(source)
    folder = fetch_snapshot(repo_id, sha, present, hub)
    return ChatTemplate(_read_template(folder, source), source, f"{repo_id}@{sha}")


def _read_template(folder: Path, source: str) -> str:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in TEMPLATE_FILES[1:]:
        file = folder / name
        if file.is_file():
            template = _template_value(json.loads(file.read_text(encoding="utf-8")).get("chat_template"), file)
            if template:
                return template
    raise _no_template(source)


def _template_value(value: Any, file: Path) -> str | None:
    """A template string, or the ``default`` one of tokenizer_config's named templates."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" not in named:
            raise ConfigError(f"{file} holds named chat templates ({', '.join(map(str, named))}) and no 'default' one")
        return named["default"]
    return value if isinstance(value, str) and value.strip() else None


def _no_template(source: str) -> ConfigError:
    return ConfigError(
        f"chat_template_from={source!r} holds no chat template (no {TEMPLATE_FILES[0]}, {TEMPLATE_FILES[1]}, "
        "or chat_template key in processor_config.json / tokenizer_config.json); name the model whose prompt "
        "format the experts were trained in, e.g. the base's -Instruct version"
    )


def apply_chat_template(backend: Any, template: ChatTemplate, backend_name: str) -> None:
    """Make a loaded lmms-eval wrapper render prompts with ``template``.

    Wrappers call ``processor.apply_chat_template`` (qwen2_vl, qwen2_5_vl, internvl_hf) or the
    tokenizer's (llava_hf, which also takes a ``chat_template`` argument of its own).
    """
    if backend_name in OWN_PROMPT_BACKENDS:
        raise ConfigError(
            f"backend {backend_name!r} builds prompts with the model's own conversation code, not a chat "
            "template; chat_template_from does not apply to it: drop it"
        )
    targets = [obj for obj in (getattr(backend, "processor", None), getattr(backend, "_tokenizer", None),
                               getattr(backend, "tokenizer", None))
               if obj is not None and hasattr(obj, "chat_template")]
    if not targets:
        raise ConfigError(
            f"backend {backend_name!r} renders prompts without a transformers chat template (no processor or "
            "tokenizer with one); chat_template_from does not apply to it: drop it"
        )
    for obj in targets:
        obj.chat_template = template.text
    if hasattr(backend, "chat_template"):
        backend.chat_template = template.text
    logger.info("prompts use the chat template of %s (%s)", template.pinned_source, template.fingerprint)


def write_chat_template(model_dir: Path, template: ChatTemplate) -> None:
    """Make a saved model's processor and tokenizer both load ``template``: transformers reads
    ``chat_template.jinja`` first, so it is written and every other copy of the base's template
    (``chat_template.json``, the ``chat_template`` key of the processor and tokenizer configs) is
    removed rather than left to disagree with it."""
    (model_dir / "chat_template.jinja").write_text(template.text, encoding="utf-8")
    (model_dir / "chat_template.json").unlink(missing_ok=True)
    for name in TEMPLATE_FILES[2:]:
        file = model_dir / name
        if file.is_file():
            config = json.loads(file.read_text(encoding="utf-8"))
            if config.pop("chat_template", None) is not None:
                file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
