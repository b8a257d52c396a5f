"""Publishing an expert after the fact, from what LLaMA-Factory left in its output directory.

Used to retry a failed push (``merge-proxy train`` wrote expert.json before pushing) or to publish an
expert trained without merge-proxy: then the training config (``--config``) supplies the datasets and
settings that LLaMA-Factory does not save in plain text, and flags supply the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from merge_proxy.errors import ConfigError
from merge_proxy.expert_metadata import EXPERT_METADATA_FILE, read_expert_metadata, write_expert_metadata
from merge_proxy.hub import HubOptions, is_repo_id, looks_like_repo_id
from merge_proxy.jsonfiles import read_adapter_config
from merge_proxy.provenance import PublishSpec, build_expert_metadata, resolve_base_model_id, summary_from_output_dir
from merge_proxy.publish import Publication, publish_expert

logger = logging.getLogger(__name__)


def _args_from_dir(output_dir: Path, config: str | None) -> dict:
    if config:
        from merge_proxy.train import read_config, split_expert_block

        args, _ = split_expert_block(read_config(config, ()), config)
        return args
    adapter = output_dir / "adapter_config.json"
    base = read_adapter_config(adapter).get("base_model_name_or_path") if adapter.is_file() else None
    return {"model_name_or_path": base, "output_dir": str(output_dir),
            "finetuning_type": "lora" if adapter.is_file() else "full"}


def publish_directory(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    domain: str | None = None,
    base_model: str | None = None,
    config: str | None = None,
    private: bool = True,
    revision: str | None = None,
    tags: Sequence[str] = (),
    license: str | None = None,
    hub: HubOptions | None = None,
) -> Publication:
    """Publish ``output_dir`` as an expert, reusing its expert.json when present."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ConfigError(f"{output_dir} is not a directory; pass LLaMA-Factory's output_dir")
    existing_path = output_dir / EXPERT_METADATA_FILE
    existing = read_expert_metadata(existing_path, fix="repair it, or delete it and pass --domain and --base-model")
    domain = domain or (existing.domain if existing else None)
    if not domain:
        raise ConfigError(f"{output_dir} has no {EXPERT_METADATA_FILE}; pass --domain D (the data domain)")
    base_model = base_model or (existing.base_model.id if existing else None)
    _check_flags(repo_id, base_model)
    block = {"domain": domain, "repo_id": repo_id, "private": private, "revision": revision,
             "tags": list(tags), "base_model": base_model, "license": license or (existing.license if existing else None)}
    spec = PublishSpec.from_block(block, where="merge-proxy publish:")
    if existing is not None:  # its provenance (samples seen, global batch) only the training run knew; relabelled
        expert = replace(existing, domain=domain, license=spec.license)
        base_id = base_model
        if not base_id:
            raise ConfigError(f"{existing_path} names no Hub base model; pass --base-model ORG/NAME")
    else:
        args = _args_from_dir(output_dir, config)
        args["output_dir"] = str(output_dir)
        base_id = resolve_base_model_id(spec, args, fix="pass --base-model ORG/NAME (its Hub id)")
        expert = build_expert_metadata(spec, args, output_dir, summary_from_output_dir(output_dir), base_id)
    publication = publish_expert(output_dir, spec, expert, base_id, hub, config=config)
    # After a successful push the local expert.json says what the Hub's says (the base id given by
    # --base-model, the domain given by --domain), so later merges from the directory pass the same
    # base check and name the expert alike.
    if existing is not None and publication.expert is not None \
            and existing_path.read_text(encoding="utf-8") != publication.expert.to_text():
        logger.info("updated %s to match the published expert.json",
                    write_expert_metadata(output_dir, publication.expert))
    return publication


def _check_flags(repo_id: str | None, base_model: str | None) -> None:
    """Errors in the flags' own words: PublishSpec's would name the YAML keys of an expert: block."""
    if not repo_id:
        raise ConfigError("no Hub repo to publish to; pass --repo ORG/NAME")
    if not is_repo_id(repo_id):
        raise ConfigError(f"--repo {repo_id!r} is not a Hub repo id; pass --repo ORG/NAME")
    if base_model and not looks_like_repo_id(base_model):
        raise ConfigError(f"--base-model {base_model!r} is not a Hub id; pass --base-model ORG/NAME")
