"""``merge-proxy report`` and ``merge-proxy push-results``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="rank mixtures, recommend one, and measure the proxy against truth")
    p.add_argument("results", help="sweep output directory (or its journal.jsonl)")
    p.add_argument("--truth", help="a truth sweep's directory or journal (mode: truth)")
    p.add_argument("--out", help="report directory (default: RESULTS/report; must not exist)")
    p.add_argument("--weights", help="benchmark weights of the aggregate, TASK=W,... (default: the recipe's; "
                   "benchmarks left unnamed get weight 0)")
    p.add_argument("--title", help="report title")
    p.set_defaults(handler=run_report)

    p = subparsers.add_parser("push-results", help="push journal, report, plots and a result card to a Hub dataset")
    p.add_argument("results", help="sweep output directory (or its journal.jsonl)")
    p.add_argument("--repo", required=True, help="dataset repo id ORG/NAME")
    p.add_argument("--truth", help="a truth sweep's directory or journal")
    p.add_argument("--report", help="an existing report directory; the card is built from its analysis.json, and "
                   "--truth/--weights, if given, must match it (default: a report made on the fly)")
    p.add_argument("--weights", help="benchmark weights of the aggregate, TASK=W,... (unnamed benchmarks get 0)")
    p.add_argument("--public", action="store_true", help="create the dataset public (default: private)")
    p.set_defaults(handler=run_push)


def run_report(args: argparse.Namespace) -> int:
    from merge_proxy.report import recommendation_summary
    from merge_proxy.results import make_report

    result = make_report(args.results, args.truth, args.out, args.weights, args.title)
    print(f"recommended mixture: {recommendation_summary(result.analysis)}")
    print(f"report: {result.report}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from merge_proxy.results import push_results

    url = push_results(args.results, args.repo, args.truth, args.report, private=not args.public,
                       weights=args.weights)
    print(url)
    return 0
