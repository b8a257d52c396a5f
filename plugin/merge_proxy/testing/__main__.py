"""``python -m merge_proxy.testing``: build the offline test kit from a shell.

    python -m merge_proxy.testing tiny-vlm DIR [--family qwen2_vl|qwen2_5_vl|internvl] [--seed N]
    python -m merge_proxy.testing domains DIR [--domains a,b] [--train N --eval M] [--seed N]
    python -m merge_proxy.testing hub --port P --data DIR [--token USER=TOKEN ...]

Each prints where its result is (the hub its endpoint) on stdout, so shell scripts can capture it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from merge_proxy.errors import MergeProxyError, describe_os_error
from merge_proxy.testing.tiny_vlm import FAMILIES  # the module imports torch only when building


def _tiny_vlm(args: argparse.Namespace) -> int:
    from merge_proxy.testing.tiny_vlm import TinyVLMSpec, build_tiny_vlm

    model = build_tiny_vlm(args.dir, seed=args.seed, spec=TinyVLMSpec(family=args.family))
    print(model.path)
    return 0


def _domains(args: argparse.Namespace) -> int:
    from merge_proxy.testing.domains import write_domains

    names = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    layout = write_domains(args.dir, names, train=args.train, eval=args.eval, seed=args.seed)
    print(f"llamafactory dataset_dir: {layout.llamafactory_dir}")
    print(f"lmms-eval include_path: {layout.lmms_eval_dir}")
    return 0


def parse_tokens(specs: Sequence[str]) -> dict[str, str]:
    """``USER=TOKEN`` or a bare ``TOKEN`` (for the default user) -> {token: user}."""
    from merge_proxy.testing.hub import DEFAULT_TOKEN, DEFAULT_USER

    if not specs:
        return {DEFAULT_TOKEN: DEFAULT_USER}
    tokens: dict[str, str] = {}
    for spec in specs:
        user, _, token = spec.rpartition("=")
        if not token:
            raise ValueError(f"--token {spec!r}: write USER=TOKEN or TOKEN")
        tokens[token] = user or DEFAULT_USER
    return tokens


def _hub(args: argparse.Namespace) -> int:
    from merge_proxy.testing.hub import serve_forever

    tokens = parse_tokens(args.token)

    def announce(endpoint: str) -> None:
        print(endpoint, flush=True)

    serve_forever(host=args.host, port=args.port, data_dir=Path(args.data), tokens=tokens, on_ready=announce)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merge_proxy.testing", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tiny-vlm", help="write a tiny random vision-language checkpoint (Qwen2-VL by default)")
    p.add_argument("dir", type=Path)
    p.add_argument("--family", choices=FAMILIES, default="qwen2_vl",
                   help="qwen2_vl (default), qwen2_5_vl, or internvl (InternVL3.5 in transformers' format)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_tiny_vlm)

    p = sub.add_parser("domains", help="write synthetic visual domains for LLaMA-Factory and lmms-eval")
    p.add_argument("dir", type=Path)
    p.add_argument("--domains", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--train", type=int, default=64, help="training samples per domain")
    p.add_argument("--eval", type=int, default=32, help="evaluation samples per domain")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_domains)

    p = sub.add_parser("hub", help="serve a Hugging Face Hub emulator on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--data", required=True, help="directory holding the repositories (kept across restarts)")
    p.add_argument(
        "--token", action="append", default=[], metavar="[USER=]TOKEN",
        help="a token that authenticates USER (default user: tester; repeatable; "
        "default: tester with hf_test_tester_token)",
    )
    p.set_defaults(handler=_hub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (ValueError, MergeProxyError) as err:
        print(f"python -m merge_proxy.testing {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output path that cannot be written (a file in the way, no permission)
        message = describe_os_error(err) if err.errno else str(err)  # the kit's own FileExistsError says it all
        print(f"python -m merge_proxy.testing {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m merge_proxy.testing {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
