"""``merge-proxy demo``: the main job end to end, offline, on the built-in tiny default.

A tiny Qwen2-VL and three synthetic visual domains; one LoRA expert per domain trained by the real
LLaMA-Factory through ``merge-proxy train`` and published to the built-in Hub emulator; a sweep over
the three-domain grid scoring merged proxies with the real lmms-eval (experts found on the Hub by
their tags); a few models really trained on mixtures, scored as truth; a report with correlations
and plots; the result card pushed to the Hub. Every step runs the same commands a user runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from merge_proxy.errors import ConfigError, MergeProxyError

logger = logging.getLogger(__name__)

DEMO_DOMAINS: tuple[str, ...] = ("color", "count", "shape")
_MARKER = ".merge-proxy-demo"


@dataclass(frozen=True)
class DemoScale:
    """How much the demo trains and scores; ``small`` is what CI runs."""

    train: int
    eval: int
    expert_steps: int
    truth_steps: int
    grid_step: float
    truth_mixtures: tuple[tuple[float, float, float], ...]


SCALES = {
    "default": DemoScale(train=96, eval=16, expert_steps=150, truth_steps=150, grid_step=0.25,
                         truth_mixtures=((0.5, 0.25, 0.25), (0.25, 0.5, 0.25), (0.25, 0.25, 0.5),
                                         (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))),
    "small": DemoScale(train=48, eval=8, expert_steps=100, truth_steps=100, grid_step=0.5,
                       truth_mixtures=((0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0))),
}


@dataclass
class DemoResult:
    out_dir: Path
    endpoint: str
    experts: dict[str, str] = field(default_factory=dict)
    recommended: str = ""
    recommended_score: float = 0.0
    summary: str = ""
    """The recommendation as one line, with the mixtures that tie with it."""
    spearman: float | None = None
    report: Path | None = None
    results_url: str = ""
    seconds: float = 0.0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the main job offline on the built-in tiny default",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default: demo-out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, data and training (default: 0)")
    p.add_argument("--scale", choices=tuple(SCALES), default="default", help="default, or small (CI)")
    p.add_argument("--endpoint", help="a Hub endpoint to use instead of the built-in emulator")
    p.add_argument("--namespace", help="user or organisation to publish to on --endpoint (default: whoami)")
    p.set_defaults(handler=_cli)


def _cli(args: argparse.Namespace) -> int:
    result = run_demo(args.out, seed=args.seed, scale=args.scale, endpoint=args.endpoint, namespace=args.namespace)
    spearman = "n/a" if result.spearman is None else f"{result.spearman:.3f}"
    print("\n".join([
        "",
        f"merge-proxy demo finished in {result.seconds:.0f} s",
        f"recommended mixture:  {result.summary}",
        f"proxy vs truth:       Spearman {spearman} on the aggregate",
        f"report:               {result.report}",
        f"proxy journal:        {result.out_dir / 'sweep' / 'journal.jsonl'}",
        f"truth journal:        {result.out_dir / 'truth' / 'journal.jsonl'}",
        "experts on the Hub:   " + ", ".join(f"{d}={r}" for d, r in sorted(result.experts.items())),
        f"result card:          {result.results_url}",
    ]))
    if not args.endpoint:  # the emulator stopped with the demo; its repositories stay on disk
        from urllib.parse import urlsplit

        print(f"                      (the built-in Hub emulator stopped with the demo; `python -m "
              f"merge_proxy.testing hub --data {result.out_dir / 'hub'} --port {urlsplit(result.results_url).port}` "
              "serves it again)")
    return 0


def _prepare_out_dir(out: Path) -> None:
    """Reuse a directory only if an earlier demo made it: never delete a user's files."""
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise ConfigError(f"{out} exists, is not empty and was not made by the demo; pass --out NEW_DIR")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("made by merge-proxy demo; deleted and rewritten by the next run\n")


def _run(cmd: list[str], log: Path, env: dict[str, str], what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env})
        except OSError as err:
            raise MergeProxyError(f"{what}: cannot start {cmd[0]} ({err.strerror})") from err
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise MergeProxyError(f"{what} failed ({tail[0][:200]}); full log: {log}")


#: The command lines, through this interpreter: console scripts need not sit beside it
#: (``pip install --user``, ``--target``, distribution layouts).
_CLIS = {"merge-proxy": "merge_proxy.cli", "llamafactory-cli": "llamafactory.cli"}


def _command(name: str) -> list[str]:
    return [sys.executable, "-m", _CLIS[name]]


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _mixture_name(weights: dict[str, float]) -> str:
    return "_".join(f"{d}{round(w * 100)}" for d, w in weights.items())


def run_demo(out_dir: Path, seed: int = 0, scale: str = "default", endpoint: str | None = None,
             namespace: str | None = None) -> DemoResult:
    """Run the whole job into ``out_dir`` (rewritten if an earlier demo made it)."""
    from contextlib import nullcontext

    import yaml
    from huggingface_hub import HfApi

    from merge_proxy.resources import recipe_path
    from merge_proxy.testing.domains import write_domains
    from merge_proxy.testing.hub import HubEmulator
    from merge_proxy.testing.tiny_vlm import build_tiny_vlm
    from merge_proxy.testing.training import tiny_mixture_config, tiny_sft_config

    size = SCALES[scale]
    out = out_dir.resolve()
    _prepare_out_dir(out)
    started = time.monotonic()
    logger.info("building the tiny Qwen2-VL and the synthetic domains %s", ", ".join(DEMO_DOMAINS))
    base = build_tiny_vlm(out / "base", seed=seed).path
    layout = write_domains(out / "data", DEMO_DOMAINS, train=size.train, eval=size.eval, seed=seed)
    hub_cm = nullcontext(None) if endpoint else HubEmulator(out / "hub")
    with hub_cm as hub:
        if hub is not None:
            env = hub.client_env(hf_home=str(out / "hf-home"))
            api = HfApi(endpoint=hub.endpoint, token=hub.token)
        else:
            env = {"HF_ENDPOINT": endpoint}
            api = HfApi(endpoint=endpoint)
        result = DemoResult(out_dir=out, endpoint=env["HF_ENDPOINT"])
        user = namespace or api.whoami()["name"]
        base_id = f"{user}/tiny-qwen2-vl"

        for domain in DEMO_DOMAINS:
            logger.info("merge-proxy train: the %s expert (%d steps), published to the Hub", domain, size.expert_steps)
            config = tiny_sft_config(base, layout.llamafactory_dir, layout.train_datasets[domain],
                                     out / "experts" / domain, max_steps=size.expert_steps, seed=seed,
                                     learning_rate=1e-2)
            config["expert"] = {"domain": domain, "repo_id": f"{user}/tiny-qwen2-vl-{domain}-expert",
                                "base_model": base_id, "private": True,
                                "license": "apache-2.0"}  # the tiny base is ours (no Hub card to inherit one from)
            cfg = _write_yaml(out / "configs" / f"expert-{domain}.yaml", config)
            _run([*_command("merge-proxy"), "train", str(cfg)], out / "logs" / f"train-{domain}.log", env,
                 f"merge-proxy train ({domain})")
            repo = f"{user}/tiny-qwen2-vl-{domain}-expert"
            result.experts[domain] = f"{repo}@{api.model_info(repo).sha[:10]}"

        recipe = yaml.safe_load(recipe_path("demo").read_text(encoding="utf-8"))
        recipe["experts"]["query"]["base"] = base_id
        recipe["mixtures"] = [{"grid": {"step": size.grid_step}}]
        recipe["output_dir"] = str(out / "sweep")
        proxy_recipe = _write_yaml(out / "demo.yaml", recipe)
        logger.info("merge-proxy sweep: merged proxies over the %g grid", size.grid_step)
        _run([*_command("merge-proxy"), "sweep", str(proxy_recipe)], out / "logs" / "sweep.log", env, "sweep")

        truth_entries = []
        for i, mix in enumerate(size.truth_mixtures):
            weights = dict(zip(DEMO_DOMAINS, mix))
            name = _mixture_name(weights)
            logger.info("llamafactory-cli train: a model really trained on %s", name)
            # Trained with another seed than the experts, so a one-domain truth model is an
            # independent run, not the expert itself.
            config = tiny_mixture_config(base, layout.llamafactory_dir,
                                         {layout.train_datasets[d]: w for d, w in weights.items()},
                                         out / "truth-models" / name, max_steps=size.truth_steps,
                                         seed=seed + 1000 + i, learning_rate=1e-2)
            cfg = _write_yaml(out / "configs" / f"truth-{name}.yaml", config)
            _run([*_command("llamafactory-cli"), "train", str(cfg)], out / "logs" / f"truth-{name}.log", env,
                 f"training on mixture {name}")
            truth_entries.append({"weights": weights, "model": f"truth-models/{name}"})
        truth_recipe = {**recipe, "name": "demo-truth", "mode": "truth", "truth": truth_entries,
                        "output_dir": str(out / "truth")}
        truth_recipe.pop("mixtures")
        truth_path = _write_yaml(out / "demo-truth.yaml", truth_recipe)
        logger.info("merge-proxy sweep: the %d trained models, as truth", len(truth_entries))
        _run([*_command("merge-proxy"), "sweep", str(truth_path)], out / "logs" / "truth.log", env, "truth sweep")

        from merge_proxy.report import recommendation_summary
        from merge_proxy.results import make_report, push_results

        report = make_report(out / "sweep", out / "truth", out / "report", title="merge-proxy demo: tiny Qwen2-VL")
        result.report = report.report
        rec = report.analysis.recommended
        result.recommended, result.recommended_score = rec.mixture_id, rec.aggregate
        result.summary = recommendation_summary(report.analysis)
        if report.analysis.truth is not None:
            result.spearman = report.analysis.truth.aggregate.correlations["spearman"].value
        from merge_proxy.hub import HubOptions

        hub_options = HubOptions(endpoint=env["HF_ENDPOINT"], token=hub.token if hub is not None else None)
        result.results_url = push_results(out / "sweep", f"{user}/tiny-mixture-search", truth=out / "truth",
                                          report_dir=out / "report", hub=hub_options)
    result.seconds = time.monotonic() - started
    logger.info("demo finished in %.0f s", result.seconds)
    return result
