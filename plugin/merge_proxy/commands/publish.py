"""``merge-proxy publish DIR --repo ID --domain D``: publish an expert trained before (or retry a push)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish",
        help="publish a LLaMA-Factory output directory as a merge-proxy expert (one Hub commit)",
        description="Reads what LLaMA-Factory left in DIR (adapter or model, trainer_state.json, expert.json if "
        "`merge-proxy train` wrote one) and asks by flag for what cannot be derived.",
    )
    p.add_argument("dir", help="LLaMA-Factory output_dir")
    p.add_argument("--repo", help="Hub repo id ORG/NAME to publish to (required; created if missing)")
    p.add_argument("--domain", help="data domain (default: expert.json's)")
    p.add_argument("--base-model", help="Hub id of the base model (needed when model_name_or_path was local)")
    p.add_argument("--config", help="the LLaMA-Factory YAML used for training (datasets, template, lr, ...)")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private; an existing "
                   "repo keeps its visibility)")
    p.add_argument("--revision", help="branch to publish to, created from main if missing (default: main)")
    p.add_argument("--tag", action="append", default=[], help="extra card tag (repeatable)")
    p.add_argument("--license", help="the card's license, a Hub license id such as apache-2.0 (default: the base "
                   "model's, read from its card)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from merge_proxy.republish import publish_directory

    publication = publish_directory(
        args.dir, repo_id=args.repo, domain=args.domain, base_model=args.base_model, config=args.config,
        private=not args.public, revision=args.revision, tags=args.tag, license=args.license,
    )
    print(f"{publication.url} ({len(publication.files)} files, commit {publication.commit_sha})")
    return 0
