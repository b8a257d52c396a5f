"""``merge-proxy experts``: find published experts on the Hub by their tags."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experts", help="list merge-proxy experts on the Hub (by base, domain, author)")
    p.add_argument("--base", help="base model Hub id")
    p.add_argument("--domain", help="data domain")
    p.add_argument("--author", help="user or organisation")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from merge_proxy.search import find_experts, format_table

    rows = find_experts(base=args.base, domain=args.domain, author=args.author)
    if rows or args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2) if args.json else format_table(rows))
        return 0
    searched = [f"{flag} {value}" for flag, value in (("--base", args.base), ("--domain", args.domain),
                                                        ("--author", args.author)) if value]
    print(f"no experts found{' for ' + ', '.join(searched) if searched else ''}"
          + ("; check the ids (merge-proxy experts alone lists every expert you can see)" if searched else ""))
    return 0
