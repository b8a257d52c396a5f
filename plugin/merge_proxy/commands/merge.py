"""``merge-proxy merge``: write a merged model (or one merged LoRA adapter) to disk."""

from __future__ import annotations

import argparse
from pathlib import Path

from merge_proxy.mixture import METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge experts with mixture weights into a full model or one LoRA adapter",
        description="theta = theta_0 + sum_i w_i (theta_i - theta_0), exact, from LoRA or full experts "
        "given as local directories or Hub repos (ORG/NAME[@REV]).",
    )
    p.add_argument("--base", required=True, help="base model: directory or Hub repo id[@revision]")
    p.add_argument(
        "--expert", action="append", required=True, metavar="NAME=SRC",
        help="an expert: NAME=directory or NAME=ORG/REPO[@REV] (repeat for each expert); without NAME= it is "
        "named by its expert.json's domain, else expert0, expert1, ... by position",
    )
    p.add_argument("--weights", required=True, help="NAME=W,NAME=W (or W,W in --expert order)")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    p.add_argument("--method", default="linear", choices=METHODS)
    p.add_argument("--scale", type=float, default=None, help="task_arithmetic: multiplier of the summed deltas")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"), help="output dtype (auto: the base's)")
    p.add_argument("--format", default="full", choices=("full", "lora"), dest="fmt",
                   help="full checkpoint, or one PEFT adapter (LoRA experts only)")
    p.add_argument("--allow-pickle", action="store_true", help="also load .bin (pickle) weights")
    p.add_argument("--chat-template-from", metavar="MODEL",
                   help="write MODEL's chat template (directory, ORG/NAME[@REV] or .jinja file) instead of the "
                   "base's, e.g. the -Instruct model's for a Qwen2-VL base (--format full)")
    p.add_argument("--no-base-check", action="store_true",
                   help="do not compare the base each expert declares with --base (shapes are still checked)")
    p.set_defaults(handler=run, unwind_on_sigterm=True, unwind_on_sighup=True)


def run(args: argparse.Namespace) -> int:
    from merge_proxy.engine import MergeMethod, build_plan
    from merge_proxy.experts import ExpertSpec, parse_expert_specs, resolve_merge_inputs
    from merge_proxy.atomic import check_new_output_dir
    from merge_proxy.chat_template import load_chat_template
    from merge_proxy.errors import ConfigError
    from merge_proxy.export import export_full, export_lora
    from merge_proxy.mixture import make_mixture

    check_new_output_dir(args.out)  # before any download
    if args.chat_template_from and args.fmt == "lora":
        raise ConfigError("--chat-template-from applies to --format full (an adapter carries no chat template; "
                          "serve it with the template of your choice)")
    template = load_chat_template(args.chat_template_from) if args.chat_template_from else None
    method = MergeMethod(args.method, 1.0 if args.scale is None else args.scale)
    specs = parse_expert_specs(args.expert)  # names given twice are refused here
    if all(s.name for s in specs):  # check the weights before any download or file read
        make_mixture(args.weights, [s.name for s in specs], method.name)
    base, experts = resolve_merge_inputs(
        ExpertSpec.parse(args.base), specs, allow_pickle=args.allow_pickle, lora_only=args.fmt == "lora"
    )
    plan = build_plan(base, experts, check_declared_base=not args.no_base_check)
    # weights by name, some experts named for the user: say what they were named
    unnamed = [f"{e.source} is named {e.name}" for s, e in zip(specs, experts) if not s.name and "=" in args.weights]
    try:
        mixture = plan.mixture(args.weights, method)
    except ConfigError as err:
        if not unnamed:
            raise
        raise ConfigError(f"{err} ({'; '.join(unnamed)}, by its expert.json's domain or its position: "
                          "name experts with --expert NAME=SRC)") from None
    if args.fmt == "lora":
        result = export_lora(plan, mixture, method, args.out, dtype=args.dtype)
    else:
        result = export_full(plan, mixture, method, args.out, dtype=args.dtype, chat_template=template)
    print(f"{result.path} ({result.format}, {result.bytes_written / 1e6:.1f} MB): {mixture.key()}")
    return 0
