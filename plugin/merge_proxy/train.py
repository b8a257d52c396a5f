"""``merge-proxy train``: LLaMA-Factory training plus one ``expert:`` block.

The config is read exactly as ``llamafactory-cli train`` reads it (OmegaConf YAML merged with
``key=value`` overrides). Without an ``expert:`` block we hand over to LLaMA-Factory's own launcher,
so behaviour is identical. With one, the block is removed before LLaMA-Factory parses the rest (it
rejects unknown keys), and ``run_exp`` runs with an :class:`ExpertPublisher` in every rank: in this
process on one device, or under a torchrun we launch ourselves (as LLaMA-Factory's launcher does) on
several, since LLaMA-Factory's own re-launch would drop our callback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from merge_proxy.errors import ConfigError, MissingDependencyError
from merge_proxy.provenance import PublishSpec, check_artifact_before_training, resolve_base_model_id
from merge_proxy.publish import pin_training_base

logger = logging.getLogger(__name__)

EXPERT_BLOCK = "expert"


def read_config(config: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """LLaMA-Factory's own reading: YAML or JSON file, then OmegaConf ``key=value`` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"config {path} must be a .yaml, .yml or .json file, as for llamafactory-cli train")
    try:
        base = OmegaConf.load(path.absolute()) if path.suffix != ".json" else OmegaConf.create(
            json.loads(path.read_text(encoding="utf-8")))
        merged = OmegaConf.merge(base, OmegaConf.from_cli(list(overrides)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    data = OmegaConf.to_container(merged, resolve=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of LLaMA-Factory arguments")
    return data


def split_expert_block(args: dict[str, Any], where: str) -> tuple[dict[str, Any], PublishSpec | None]:
    rest = dict(args)
    block = rest.pop(EXPERT_BLOCK, None)
    if block is None:
        return rest, None
    return rest, PublishSpec.from_block(block, where=f"{where}: expert:")


def _device_count() -> int:
    from llamafactory.extras.misc import get_device_count

    return get_device_count()


def _use_torchrun() -> bool:
    """LLaMA-Factory's launcher's condition: USE_MCA forces torchrun; Ray and KTransformers runs stay
    in this process."""
    from llamafactory.extras.misc import is_env_enabled, use_kt, use_ray

    if is_env_enabled("USE_MCA"):
        os.environ["FORCE_TORCHRUN"] = "1"
    return is_env_enabled("FORCE_TORCHRUN") or (_device_count() > 1 and not use_ray() and not use_kt())


def _torchrun_env() -> dict[str, str]:
    """The launcher's environment: OPTIM_TORCH (on by default) sets the allocator and NCCL options
    that keep DDP from running out of memory where ``llamafactory-cli train`` would not."""
    from llamafactory.extras.misc import is_env_enabled

    env = dict(os.environ)
    if is_env_enabled("OPTIM_TORCH", "1"):
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        env["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "1"
    return env


def _torchrun_command(job_file: Path) -> list[str]:
    """Same variables and defaults as LLaMA-Factory's launcher (NNODES, NODE_RANK, NPROC_PER_NODE,
    MASTER_*), including its elastic launch when RDZV_ID is set (MIN_NNODES:MAX_NNODES, MAX_RESTARTS)."""
    from llamafactory.extras.misc import find_available_port

    nnodes = os.getenv("NNODES", "1")
    nproc = os.getenv("NPROC_PER_NODE", str(max(_device_count(), 1)))
    master_addr = os.getenv("MASTER_ADDR", "127.0.0.1")
    master_port = os.getenv("MASTER_PORT", str(find_available_port()))
    rdzv_id = os.getenv("RDZV_ID")
    command = [sys.executable, "-m", "torch.distributed.run"]
    if rdzv_id is not None:
        min_nnodes, max_nnodes = os.getenv("MIN_NNODES"), os.getenv("MAX_NNODES")
        elastic = f"{min_nnodes}:{max_nnodes}" if min_nnodes is not None and max_nnodes is not None else nnodes
        command += ["--nnodes", elastic, "--nproc-per-node", nproc, "--rdzv-id", rdzv_id, "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"{master_addr}:{master_port}", "--max-restarts", os.getenv("MAX_RESTARTS", "0")]
    else:
        command += ["--nnodes", nnodes, "--node_rank", os.getenv("NODE_RANK", "0"), "--nproc_per_node", nproc,
                    "--master_addr", master_addr, "--master_port", master_port]
    return [*command, "-m", "merge_proxy.train", str(job_file)]


def run_worker(args: dict[str, Any], spec: PublishSpec) -> None:
    """One rank: LLaMA-Factory's run_exp with our publisher, then publication on the main process."""
    from llamafactory.train.tuner import run_exp

    from merge_proxy.callback import ExpertPublisher

    publisher = ExpertPublisher(spec, args)
    try:
        run_exp(args=args, callbacks=[publisher])
    except BaseException as err:  # incl. Ctrl-C: the save, metrics or eval after on_train_end may have failed
        publisher.abandon(f"LLaMA-Factory failed ({type(err).__name__})")
        raise
    publication = publisher.finish()
    if publication is not None:
        logger.info("expert published: %s (commit %s)", publication.url, publication.commit_sha)


def train(config: str | Path, overrides: Sequence[str] = ()) -> int:
    """Run training as ``llamafactory-cli train`` would, publishing the expert if the config says so."""
    try:
        import llamafactory  # noqa: F401
    except ImportError:
        raise MissingDependencyError("LLaMA-Factory", "llamafactory", "merge-proxy train") from None
    args, spec = split_expert_block(read_config(config, overrides), str(config))
    if spec is None:
        from llamafactory.launcher import launch

        sys.argv = ["llamafactory-cli", "train", str(config), *overrides]
        launch()
        return 0
    check_artifact_before_training(spec, args)  # fail before hours of training, not after
    if spec.push:
        resolve_base_model_id(spec, args)
    args = pin_training_base(args)  # the commit trained on is the one expert.json records
    if not _use_torchrun():
        run_worker(args, spec)
        return 0
    with tempfile.TemporaryDirectory(prefix="merge-proxy-train-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"args": args, "expert": spec.__dict__ | {"tags": list(spec.tags)}}))
        return subprocess.run(_torchrun_command(job), env=_torchrun_env(), check=False).returncode


def _worker_main(job_file: str) -> int:
    from merge_proxy.errors import MergeProxyError

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(job["args"], PublishSpec.from_block(job["expert"]))
    except MergeProxyError as err:
        print(f"merge-proxy train: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":  # torchrun entry: python -m merge_proxy.train JOB.json
    sys.exit(_worker_main(sys.argv[1]))
