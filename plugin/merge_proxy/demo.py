"""``merge-proxy demo``: the largest end-to-end path that exists, offline, on the built-in tiny default.

Until the mixture demo lands (sweep, truth runs and report), the demo runs the offline kit the way the
main job will: a tiny Qwen2-VL, synthetic visual domains, one LoRA expert per domain trained by the
real LLaMA-Factory through ``merge-proxy train`` (an ``expert:`` block publishes it to the Hub emulator
with its card and expert.json), each found there by its tags, then
merged proxies (each expert alone, the uniform mixture) scored on every domain by the real
``lmms-eval --model merge_proxy``, which fetches the experts from the emulator by commit sha.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
        "merge-proxy demo: the mixture sweep, truth runs and report are not built yet (issues 6-7);",
        "this ran the largest path that exists: tiny Qwen2-VL -> synthetic domains -> LoRA experts",
        "trained and published by merge-proxy train -> the Hub emulator -> lmms-eval --model merge_proxy",
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


def _train_expert(base: Path, layout, domain: str, out: Path, seed: int, steps: int, repo_id: str,
                  base_id: str, env: dict[str, str]) -> None:
    """`merge-proxy train` with an expert: block: LLaMA-Factory trains, the callback publishes."""
    import yaml

    from merge_proxy.testing.training import tiny_sft_config

    config = tiny_sft_config(
        base, layout.llamafactory_dir, layout.train_datasets[domain], out / "experts" / domain,
        max_steps=steps, seed=seed, learning_rate=5e-3,
    )
    config["expert"] = {"domain": domain, "repo_id": repo_id, "base_model": base_id, "private": True}
    cfg_path = out / "configs" / f"{domain}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = out / "logs" / f"train-{domain}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cli = Path(sys.executable).with_name("merge-proxy")
    with log_path.open("w") as log:
        proc = subprocess.run([str(cli), "train", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"merge-proxy train failed for {domain}; see {log_path}")


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
        env = hub.client_env(hf_home=str(out / "hf-home"))
        pinned: dict[str, str] = {}
        for domain in DEMO_DOMAINS:
            logger.info("merge-proxy train: the %s expert (%d steps), published to the Hub emulator", domain, steps)
            repo_id = f"{user}/tiny-qwen2-vl-{domain}-expert"
            _train_expert(base, layout, domain, out, seed, steps, repo_id, base_id, env)
            found = [m.id for m in api.list_models(filter=["merge-proxy-expert", f"merge-proxy-domain:{domain}"])]
            if found != [repo_id]:
                raise RuntimeError(f"the Hub emulator found {found} for domain {domain}, expected [{repo_id}]")
            sha = api.model_info(repo_id).sha
            pinned[domain] = f"{repo_id}@{sha}"
            result.experts[domain] = f"{repo_id}@{sha[:10]}"

        # lmms-eval fetches the experts from the emulator by commit and merges them in memory.
        experts_arg = ";".join(f"{d}={src}" for d, src in pinned.items())
        mixtures = {d: {e: float(e == d) for e in DEMO_DOMAINS} for d in DEMO_DOMAINS}
        mixtures["uniform"] = {e: round(1 / len(DEMO_DOMAINS), 10) for e in DEMO_DOMAINS}
        tasks = [layout.tasks[d] for d in DEMO_DOMAINS]
        cpu = "device_map=cpu,device=cpu"
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
