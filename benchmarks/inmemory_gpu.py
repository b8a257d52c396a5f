"""Time to a ready in-memory proxy and to a re-merge, on a GPU, against loading the base alone.

The in-memory path is what lmms-eval (``--model merge_proxy``) and sweeps use on GPU machines: the
base is loaded onto the device once, theta_0 of the touched parameters is kept there, and every
(re-)merge is a few matrix products per layer. This script measures it side by side with a plain
``from_pretrained(..., device_map="cuda")`` of the same base, on a Qwen2-VL-shaped model of a chosen
size (default about 1.5 B parameters, Qwen2-VL-2B's language model) with 4 LoRA experts (r=16, all
LM linear layers). Run: ``python benchmarks/inmemory_gpu.py [--hidden 1536 --layers 28]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--intermediate", type=int, default=8960)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForImageTextToText

    from merge_proxy.experts import ExpertSpec, resolve, resolve_experts
    from merge_proxy.inplace import InPlaceMerger, PlanPrefetch
    from merge_proxy.testing.experts import make_lora_expert
    from merge_proxy.testing.tiny_vlm import TinyVLMSpec, build_tiny_vlm

    work = args.workdir or Path(tempfile.mkdtemp(prefix="inmemory-gpu-"))
    head_dim = args.hidden // args.heads
    quarter = head_dim // 2
    spec = TinyVLMSpec(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                       mrope_section=(quarter // 4, (quarter - quarter // 4) // 2,
                                      quarter - quarter // 4 - (quarter - quarter // 4) // 2),
                       initializer_range=0.02, dtype="bfloat16")  # as VLM checkpoints ship
    t0 = time.perf_counter()
    base = build_tiny_vlm(work / "base-bf16", seed=0, spec=spec)
    experts = {f"e{i}": make_lora_expert(base.path, work / f"e{i}", seed=i, r=16, lora_alpha=32)
               for i in range(4)}
    print(f"built {base.num_parameters / 1e9:.2f} B parameters and 4 LoRA experts in {time.perf_counter() - t0:.0f} s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights_a = {"e0": 0.4, "e1": 0.3, "e2": 0.2, "e3": 0.1}
    weights_b = {"e0": 0.1, "e1": 0.2, "e2": 0.3, "e3": 0.4}
    base_model = resolve(ExpertSpec(str(work / "base-bf16")), for_base=True)
    resolved = resolve_experts([ExpertSpec(str(p), name=n) for n, p in experts.items()])

    rows: dict[str, list[float]] = {"load": [], "ready": [], "remerge": [], "plan": [], "merge": []}
    for _ in range(args.repeat):
        _sync()
        t = time.perf_counter()
        m = AutoModelForImageTextToText.from_pretrained(work / "base-bf16", dtype=torch.bfloat16, device_map=device)
        _sync()
        rows["load"].append(time.perf_counter() - t)
        del m
        torch.cuda.empty_cache() if device == "cuda" else None

        _sync()
        t = time.perf_counter()
        # As the lmms-eval model does it: the experts are read while the base loads.
        prefetch = PlanPrefetch(base_model, resolved)
        m = AutoModelForImageTextToText.from_pretrained(work / "base-bf16", dtype=torch.bfloat16, device_map=device)
        tp = time.perf_counter()
        plan = prefetch.result(m)
        merger = InPlaceMerger(m, plan)
        tm = time.perf_counter()
        merger.merge(weights_a)
        _sync()
        end = time.perf_counter()
        rows["ready"].append(end - t)
        rows["plan"].append(tm - tp)
        rows["merge"].append(end - tm)
        t = time.perf_counter()
        merger.remerge(weights_b)
        _sync()
        rows["remerge"].append(time.perf_counter() - t)
        del m, merger, plan
        torch.cuda.empty_cache() if device == "cuda" else None

    best = {k: min(v) for k, v in rows.items()}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; best of {args.repeat}")
    print(f"{'load base alone':32s} {best['load']:8.3f} s")
    print(f"{'ready proxy (load+plan+merge)':32s} {best['ready']:8.3f} s   ratio {best['ready'] / best['load']:.2f}x (target <= 1.3x)")
    print(f"{'  of which plan wait + staging':32s} {best['plan']:8.3f} s")
    print(f"{'  of which first merge':32s} {best['merge']:8.3f} s")
    print(f"{'re-merge to new weights':32s} {best['remerge']:8.3f} s   ratio {best['remerge'] / best['load']:.2f}x (target < 0.3x)")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows, "best": best}, indent=2))


if __name__ == "__main__":
    main()
