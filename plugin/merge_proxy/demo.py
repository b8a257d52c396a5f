"""``merge-proxy demo``: the largest end-to-end path that exists, offline, on the built-in tiny default.

Until the mixture demo lands (sweep, truth runs and report), the demo runs the offline kit the way the
main job will: a tiny Qwen2-VL, synthetic visual domains, one LoRA expert per domain trained by the
real ``llamafactory-cli``, each expert published to the Hub emulator and found there by its tags, then
merged proxies (each expert alone, the uniform mixture) scored on every domain by the real
``lmms-eval --model merge_proxy``, which fetches the experts from the emulator by commit sha.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from merge_proxy.errors import ConfigError

logger = logging.getLogger(__name__)

DEMO_DOMAINS: tuple[str, ...] = ("color", "count", "shape")
_MARKER = ".merge-proxy-demo"


@dataclass
class DemoResult:
    """Where the demo put things and the scores it measured (domain task -> model -> exact match)."""

    out_dir: Path
    base_model: Path
    endpoint: str
    experts: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job offline on the built-in tiny default",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default: demo-out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, data and training (default: 0)")
    p.add_argument("--steps", type=int, default=30, help="LoRA training steps per expert (default: 30)")
    p.set_defaults(handler=_cli)


def _cli(args: argparse.Namespace) -> int:
    result = run_demo(args.out, seed=args.seed, steps=args.steps)
    tasks = sorted(result.scores)
    models = ["base"] + sorted(result.experts) + ["uniform"]
    width = max(len(m) for m in [*models, "exact match"]) + 2
    lines = [
        "",
        "merge-proxy demo: the mixture sweep, truth runs and report are not built yet (issues 5-7);",
        "this ran the largest path that exists: tiny Qwen2-VL -> synthetic domains -> LoRA experts",
        "trained by llamafactory-cli -> published to the Hub emulator -> lmms-eval --model merge_proxy",
        "fetching them by commit and scoring merged proxies (each expert alone, and the uniform mix).",
        "",
        "exact match".ljust(width) + "".join(t.ljust(16) for t in tasks),
    ]
    for model in models:
        lines.append(model.ljust(width) + "".join(f"{result.scores[t][model]:<16.3f}" for t in tasks))
    lines += [
        "",
        f"outputs:        {result.out_dir}",
        f"base model:     {result.base_model}",
        f"experts on hub: " + ", ".join(f"{d}={r}" for d, r in sorted(result.experts.items())),
        f"scores:         {result.out_dir / 'scores.json'}",
    ]
    print("\n".join(lines))
    return 0


def _prepare_out_dir(out: Path) -> None:
    """Reuse a directory only if an earlier demo made it: never delete a user's files."""
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise ConfigError(f"{out} exists, is not empty and was not made by the demo; pass --out NEW_DIR")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("made by merge-proxy demo; deleted and rewritten by the next run\n")


def _train_expert(base: Path, layout, domain: str, out: Path, seed: int, steps: int) -> Path:
    import yaml

    from merge_proxy.testing.training import tiny_sft_config

    config = tiny_sft_config(
        base, layout.llamafactory_dir, layout.train_datasets[domain], out / "experts" / domain,
        max_steps=steps, seed=seed, learning_rate=5e-3,
    )
    cfg_path = out / "configs" / f"{domain}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = out / "logs" / f"train-{domain}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cli = Path(sys.executable).with_name("llamafactory-cli")
    with log_path.open("w") as log:
        proc = subprocess.run([str(cli), "train", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"llamafactory-cli train failed for {domain}; see {log_path}")
    return Path(config["output_dir"])


def _publish(api, expert_dir: Path, repo_id: str, domain: str, base_id: str) -> str:
    """Upload an expert with a card whose metadata the Hub turns into searchable tags."""
    card = (
        "---\n"
        f"base_model: {base_id}\nbase_model_relation: adapter\nlibrary_name: peft\n"
        f"tags:\n- merge-proxy-expert\n- merge-proxy-domain:{domain}\n- llama-factory\n"
        "---\n\n"
        f"# {repo_id}\n\nA demo LoRA expert for the synthetic domain `{domain}`.\n"
    )
    (expert_dir / "README.md").write_text(card, encoding="utf-8")
    api.create_repo(repo_id, private=True, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=expert_dir, commit_message=f"expert {domain}")
    return info.oid


def run_demo(out_dir: Path, seed: int = 0, steps: int = 30) -> DemoResult:
    """Run the kit demo into ``out_dir`` (rewritten if an earlier demo made it)."""
    from huggingface_hub import HfApi

    from merge_proxy.testing.domains import write_domains
    from merge_proxy.testing.hub import HubEmulator
    from merge_proxy.testing.lmms import run_lmms_eval
    from merge_proxy.testing.tiny_vlm import build_tiny_vlm

    out = out_dir.resolve()
    _prepare_out_dir(out)
    started = time.monotonic()
    base = build_tiny_vlm(out / "base", seed=seed).path
    layout = write_domains(out / "data", DEMO_DOMAINS, train=64, eval=16, seed=seed)
    result = DemoResult(out_dir=out, base_model=base, endpoint="")

    with HubEmulator(out / "hub") as hub:
        result.endpoint = hub.endpoint
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        user = api.whoami()["name"]
        base_id = f"{user}/tiny-qwen2-vl"
        pinned: dict[str, str] = {}
        for domain in DEMO_DOMAINS:
            logger.info("training the %s expert (%d steps)", domain, steps)
            expert_dir = _train_expert(base, layout, domain, out, seed, steps)
            repo_id = f"{user}/tiny-qwen2-vl-{domain}-expert"
            sha = _publish(api, expert_dir, repo_id, domain, base_id)
            found = [m.id for m in api.list_models(filter=["merge-proxy-expert", f"merge-proxy-domain:{domain}"])]
            if found != [repo_id]:
                raise RuntimeError(f"the Hub emulator found {found} for domain {domain}, expected [{repo_id}]")
            pinned[domain] = f"{repo_id}@{sha}"
            result.experts[domain] = f"{repo_id}@{sha[:10]}"

        # lmms-eval fetches the experts from the emulator by commit and merges them in memory.
        experts_arg = ";".join(f"{d}={src}" for d, src in pinned.items())
        mixtures = {d: {e: float(e == d) for e in DEMO_DOMAINS} for d in DEMO_DOMAINS}
        mixtures["uniform"] = {e: round(1 / len(DEMO_DOMAINS), 10) for e in DEMO_DOMAINS}
        tasks = [layout.tasks[d] for d in DEMO_DOMAINS]
        cpu = "device_map=cpu,device=cpu"
        env = hub.client_env(hf_home=str(out / "hf-home"))
        runs = {"base": ("qwen2_vl", f"pretrained={base},{cpu}")}
        for name, weights in mixtures.items():
            weights_arg = ";".join(f"{e}={w}" for e, w in weights.items())
            runs[name] = ("merge_proxy", f"pretrained={base},experts={experts_arg},weights={weights_arg},{cpu}")
        for name, (model, model_args) in runs.items():
            logger.info("lmms-eval --model %s: %s on %s", model, name, ", ".join(tasks))
            run = run_lmms_eval(model, model_args, tasks, out / "eval" / name,
                                include_path=layout.lmms_eval_dir, env=env)
            for task in tasks:
                result.scores.setdefault(task, {})[name] = run.metric(task)
    (out / "scores.json").write_text(json.dumps(result.scores, indent=2, sort_keys=True) + "\n")
    logger.info("demo finished in %.0f s", time.monotonic() - started)
    return result
