"""Publishing a trained expert to the Hub: LLaMA-Factory's output as saved, a card and expert.json,
in ONE commit.

The card is validated locally before anything is sent, the repository is created first (creating an
empty repo is no commit), then every file goes in one ``create_commit``: the Hub either has the whole
expert or none of it. That commit also deletes every file the target revision holds that the new
expert does not (a re-published expert must not keep an old run's shards or index), and names the
revision it read as its parent, so a concurrent commit makes it fail instead of leaving a mix. A
failure leaves the training output untouched and says how to retry.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from merge_proxy.errors import MergeProxyError, describe_error
from merge_proxy.expert_metadata import EXPERT_METADATA_FILE, ExpertMetadata, LoraSettings
from merge_proxy.hub import HubOptions, is_commit_sha, stale_file_deletes
from merge_proxy.jsonfiles import read_adapter_config
from merge_proxy.model_cards import VISION_PIPELINE, BaseCard, base_card, pipeline_tag
from merge_proxy.provenance import DOMAIN_TAG_PREFIX, EXPERT_TAG, PublishSpec, loaded_from_hub

logger = logging.getLogger(__name__)

#: What is never published: LLaMA-Factory's own card (replaced), pickles (training_args.bin holds
#: arbitrary objects), and intermediate checkpoints (subdirectories).
_SKIP_NAMES = {"README.md", ".gitattributes"}
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class PublishError(MergeProxyError):
    """The expert could not be published; the training output is intact."""


@dataclass(frozen=True)
class Publication:
    repo_id: str
    commit_sha: str
    url: str
    files: tuple[str, ...]
    expert: ExpertMetadata | None = None
    """The expert.json record as published (base id filled in), for the caller to keep locally."""


def artifact_files(output_dir: Path) -> list[Path]:
    """The files of LLaMA-Factory's output_dir that make up the expert, as saved (top level only)."""
    files = [
        p for p in sorted(output_dir.iterdir())
        if p.is_file() and p.name not in _SKIP_NAMES and not p.name.endswith(_SKIP_SUFFIXES)
        and not p.name.startswith(".")
    ]
    if not any(p.name in ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
               for p in files):
        raise PublishError(
            f"{output_dir} holds no saved model (adapter_model.safetensors or model*.safetensors); "
            "did training finish and save (LLaMA-Factory writes them after the last step)?"
        )
    return files


def card_metadata(
    spec: PublishSpec, expert: ExpertMetadata, base_model_id: str, pipeline: str | None = VISION_PIPELINE,
    license_fields: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The card's YAML metadata, as the Hub reads it (base_model, relation, datasets, tags)."""
    adapter = expert.artifact == "adapter"
    datasets = sorted({d.hub_id for d in expert.datasets if d.hub_id})
    meta: dict[str, Any] = {
        "base_model": base_model_id,
        "base_model_relation": "adapter" if adapter else "finetune",
        "library_name": "peft" if adapter else "transformers",
        "tags": [EXPERT_TAG, f"{DOMAIN_TAG_PREFIX}{spec.domain}", "llama-factory", *(["lora"] if adapter else []),
                 *[t for t in spec.tags if t not in (EXPERT_TAG,)]],
        "merge_proxy": {
            "domain": spec.domain, "kind": "lora" if adapter else "full", "rank": expert.lora.r if expert.lora else None,
            "samples": expert.samples, "schema_version": expert.schema_version,
        },
    }
    if pipeline:
        meta["pipeline_tag"] = pipeline
    if datasets:
        meta["datasets"] = datasets
    meta.update({"license": spec.license} if spec.license else license_fields or {})
    return meta


def render_card(
    spec: PublishSpec, expert: ExpertMetadata, base_model_id: str, repo_id: str, pipeline: str | None = VISION_PIPELINE,
    license_fields: dict[str, str] | None = None,
) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from merge_proxy.resources import card_template

    meta = card_metadata(spec, expert, base_model_id, pipeline, license_fields)
    data = ModelCardData(**meta)
    training = expert.training
    context = {
        "repo_id": repo_id, "domain": spec.domain, "base_model": base_model_id,
        "base_revision": expert.base_model.revision,
        "artifact_description": "a LoRA adapter" if expert.artifact == "adapter" else "a full fine-tune",
        "finetuning_type": expert.finetuning_type, "lora": _lora_summary(expert.lora),
        "datasets": [{"name": d.hub_id or d.name, "samples": d.rows if d.rows is not None else "?"}
                     for d in expert.datasets],
        "samples": expert.samples, "val_size": expert.mixing.get("val_size"),
        "training": {
            "steps": training.global_steps, "global_batch_size": training.global_batch_size,
            "learning_rate": expert.learning_rate, "lr_scheduler": expert.lr_scheduler_type,
            "final_loss": training.final_loss, "train_loss": training.train_loss,
        },
    }
    card = ModelCard.from_template(data, template_str=card_template("expert"), **context)
    return str(card)


def _lora_summary(lora: LoraSettings | None) -> dict[str, Any] | None:
    """The card's LoRA row: the settings, with targets summarised."""
    if lora is None:
        return None
    return {**asdict(lora), "target_modules": [lora.target_summary]}


def publish_expert(
    output_dir: str | Path,
    spec: PublishSpec,
    expert: ExpertMetadata,
    base_model_id: str,
    hub: HubOptions | None = None,
    config: str | Path | None = None,
) -> Publication:
    """Create (if needed) the repo and push the expert in one commit; raise PublishError on failure.

    ``config`` (the training YAML a ``merge-proxy publish --config`` read) only goes into the retry
    command printed on failure.
    """
    from huggingface_hub import CommitOperationAdd

    hub = hub or HubOptions()
    output_dir = Path(output_dir)
    if not spec.repo_id:
        raise PublishError("no Hub repo to publish to; set expert: repo_id: ORG/NAME, or pass --repo ORG/NAME")
    files = artifact_files(output_dir)
    api = hub.api()
    retry = f"the training output in {output_dir} is intact; retry with: {retry_command(output_dir, spec, base_model_id, config)}"
    expert = _pinned(api, with_base_model_id(expert, base_model_id), retry)
    own_task = pipeline_tag(output_dir)
    base = base_card(expert.base_model, hub) if not (spec.license and own_task) else BaseCard()
    card = render_card(spec, expert, base_model_id, spec.repo_id, own_task or base.pipeline_tag, base.license)
    expert_json = expert.to_text()
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=_published(p, expert)) for p in files
                  if p.name != EXPERT_METADATA_FILE]
    operations.append(CommitOperationAdd(path_in_repo=EXPERT_METADATA_FILE, path_or_fileobj=expert_json.encode()))
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    try:
        api.create_repo(spec.repo_id, private=spec.private, exist_ok=True)
        if spec.revision:
            api.create_branch(spec.repo_id, branch=spec.revision, exist_ok=True)
        parent, stale = stale_file_deletes(api, spec.repo_id, spec.revision, {op.path_in_repo for op in operations})
        info = api.create_commit(
            spec.repo_id, operations=[*operations, *stale], revision=spec.revision, parent_commit=parent,
            commit_message=f"merge-proxy expert: {spec.domain}",
            commit_description=f"Published by merge-proxy from LLaMA-Factory output ({len(operations)} files"
            + (f", {len(stale)} stale files removed)." if stale else ")."),
        )
    except Exception as err:  # noqa: BLE001 - any client failure gets the same actionable message
        raise PublishError(f"publishing {spec.repo_id} failed ({describe_error(err)}); {retry}") from err
    logger.info("published %s@%s (%d files)", spec.repo_id, info.oid[:10], len(operations))
    return Publication(spec.repo_id, info.oid, info.commit_url, tuple(op.path_in_repo for op in operations), expert)


def _published(path: Path, expert: ExpertMetadata) -> str | bytes:
    """A file as the Hub gets it: as saved, except adapter_config.json, which names the Hub base (and
    the commit trained on) instead of the local path training loaded it from: PEFT's AutoPeftModel and
    the Hub's "Use this model" load the base from there, and a path on the trainer's disk loads nowhere
    else. The local file is left as LLaMA-Factory wrote it."""
    if path.name != "adapter_config.json":
        return str(path)
    config = read_adapter_config(path, PublishError)
    base = expert.base_model
    config["base_model_name_or_path"] = base.id
    if is_commit_sha(base.revision):
        config["revision"] = base.revision
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _pinned(api: Any, expert: ExpertMetadata, retry: str) -> ExpertMetadata:
    try:
        return pin_base_revision(api, expert)
    except Exception as err:  # noqa: BLE001 - same actionable message as a failed push
        base = expert.base_model
        raise PublishError(f"cannot resolve the base model {base.path}@{base.revision or 'main'} to a "
                           f"commit ({describe_error(err)}); check its id and your access to it; {retry}") from err


def pin_base_revision(api: Any, expert: ExpertMetadata) -> ExpertMetadata:
    """expert.json's base revision as a commit sha, when it names a branch or tag of a Hub base.

    ``merge-proxy train`` pins the base before training (:func:`pin_training_base`), so its experts
    arrive here with a sha. An expert trained elsewhere may name a ref (``v1``): its commit now is the
    best record there is. One that names no revision is left so: resolving ``main`` today could name
    a commit it was never trained on. A base loaded from a local directory has no Hub revision to ask
    for (its Hub id only names it), so publishing such an expert needs no access to the base repo.
    """
    base = expert.base_model
    path, revision = str(base.path or ""), base.revision
    if not loaded_from_hub(path) or base.id != path or not revision or is_commit_sha(revision):
        return expert
    sha = api.model_info(path, revision=revision).sha
    logger.info("base model %s@%s is commit %s", path, revision, sha)
    return expert.with_base(revision=sha)


def pin_training_base(args: dict[str, Any], hub: HubOptions | None = None) -> dict[str, Any]:
    """LLaMA-Factory arguments whose Hub base is pinned to the commit its revision names now, so the
    run downloads exactly the commit expert.json records (a branch could move during a long run).

    Offline, or when the Hub cannot be asked, the arguments stay as written (training may still run
    from the cache); expert.json then records the revision as given.
    """
    from huggingface_hub.constants import HF_HUB_OFFLINE

    path, revision = str(args.get("model_name_or_path") or ""), args.get("model_revision")
    if not loaded_from_hub(path) or is_commit_sha(revision) or HF_HUB_OFFLINE:
        return args
    try:
        sha = (hub or HubOptions()).api().model_info(path, revision=revision or None).sha
    except Exception as err:  # noqa: BLE001 - training may still work from the cache
        logger.warning("could not pin base %s@%s to a commit (%s); expert.json records the revision as given",
                       path, revision or "main", describe_error(err))
        return args
    logger.info("training from base %s@%s = commit %s", path, revision or "main", sha)
    return {**args, "model_revision": sha}


def with_base_model_id(expert: ExpertMetadata, base_model_id: str) -> ExpertMetadata:
    """expert.json naming the Hub base the card names: the merge engine checks experts against the base
    by expert.json's ``base_model.id`` (and local path), so a base given only later (``publish
    --base-model``) must land there too, or merging the Hub expert onto the Hub base is refused."""
    return expert if expert.base_model.id == base_model_id else expert.with_base(id=base_model_id)


def retry_command(output_dir: Path, spec: PublishSpec, base_model_id: str, config: str | Path | None = None) -> str:
    """The ``merge-proxy publish`` line that publishes exactly what failed: same repo, branch, visibility
    and tags (a retry that silently made a private repo public, or dropped tags, would be a different
    publication). Quoted for a POSIX shell."""
    args = ["merge-proxy", "publish", str(output_dir), "--repo", str(spec.repo_id), "--domain", spec.domain,
            "--base-model", base_model_id]
    if config:
        args += ["--config", str(config)]
    if spec.revision:
        args += ["--revision", spec.revision]
    if not spec.private:
        args.append("--public")
    for tag in spec.tags:
        args += ["--tag", tag]
    if spec.license:
        args += ["--license", spec.license]
    return shlex.join(args)
