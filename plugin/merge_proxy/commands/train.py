"""``merge-proxy train CONFIG.yaml [key=value ...]``: llamafactory-cli train plus an ``expert:`` block."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with LLaMA-Factory; an expert: block in the YAML publishes the expert to the Hub",
        description="Runs LLaMA-Factory exactly as `llamafactory-cli train CONFIG [key=value ...]`. An optional "
        "`expert:` block (domain, repo_id, private, revision, tags, base_model, push, artifact) is removed before "
        "LLaMA-Factory reads the config; after training the expert is published to the Hub in one commit with a "
        "card and expert.json.",
    )
    p.add_argument("config", help="LLaMA-Factory YAML (or JSON) config")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value overrides, as for llamafactory-cli")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from merge_proxy.train import train

    return train(args.config, args.overrides)
