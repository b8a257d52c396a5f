"""Merge speed and memory of merge-proxy against the reference pipeline and mergekit.

Builds a synthetic Qwen2-VL-shaped model of ``--params`` parameters (bf16 safetensors, like real VLM
checkpoints), 4 LoRA experts (r=16, alpha=32, all language-model linear layers) and 4 full bf16
experts, then measures side by side, each path in a FRESH subprocess:

1. our ``export_full`` of the 4 LoRA experts vs the reference pipeline (the paper's repo): every LoRA
   expert exported to a full bf16 model with PEFT's ``merge_and_unload``, the 4 full models loaded,
   averaged in float32, the merge saved in float32 and loaded back for evaluation;
2. mergekit's ``linear`` merge of the 4 full experts (in its own venv, installed under the workdir)
   vs our ``export_full`` of the same experts;
3. the peak RSS of our full-expert export against the base model's size on disk;
4. the time to a ready in-memory proxy (load + plan + ``InPlaceMerger.merge``) and to a re-merge,
   against a plain load of the base, and the bytes the in-memory path writes (must be 0).

Why subprocesses: peak RSS (``ru_maxrss``) only ever grows, so each path gets its own process and
the parent reads that child's own rusage with ``os.wait4``; a child that only imports the stack
gives the interpreter+imports baseline that is subtracted for a fair comparison. The parent also
samples each child's ``RssAnon``/``RssFile`` (``/proc/PID/status``) because memory-mapped
safetensors pages count in RSS although the kernel can drop them at will.

Usage::

    python benchmarks/merge_speed.py                 # 300M-parameter model, ~10-15 min on 2 cores
    python benchmarks/merge_speed.py --quick         # ~50M-parameter smoke run
    python benchmarks/merge_speed.py --skip-mergekit --keep --workdir /tmp/ms

The OS page cache is warm for every path (inputs are read once right before each measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parent never imports torch: only the measured children pay for it
    import torch
    from merge_proxy.testing.tiny_vlm import TinyVLMSpec

N_EXPERTS = 4
LORA_R, LORA_ALPHA = 16, 32
#: Linear weights (sum to 1); distinct so a mix-up of experts would show in the verification.
WEIGHTS: dict[str, float] = {"e1": 0.4, "e2": 0.3, "e3": 0.2, "e4": 0.1}
REMERGE_WEIGHTS: dict[str, float] = {"e1": 0.1, "e2": 0.2, "e3": 0.3, "e4": 0.4}
#: The model family: Qwen2-VL-like proportions (GQA, SwiGLU at 4x) with a 64-wide head; the size is
#: set by the number of layers because the tiny BPE tokenizer keeps the vocabulary (and so the
#: embedding matrices) small.
SHAPE: dict[str, object] = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_key_value_heads": 4,
    "mrope_section": (8, 12, 12), "vision_depth": 2, "vision_embed_dim": 256, "vision_num_heads": 4,
    "bpe_vocab_size": 512,
}
MERGEKIT_REQUIREMENT = "mergekit"
CHILD_TIMEOUT_S = 1800
SAMPLE_INTERVAL_S = 0.02
#: A path whose run saw other processes use more than this share of its wall time in CPU is flagged.
CONTENTION_SHARE = 0.25
#: Result keys that repeat another entry (the mergekit run the targets use).
ALIASES = frozenset({"mergekit_used"})
PAGE_CACHE_NOTE = (
    "OS page cache: warm for every path (all inputs are read once right before each measurement); "
    "ours fsyncs its weight files before the atomic rename of its output (inside its time); the "
    "reference and mergekit do not fsync."
)
GIB = 1024**3


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where fixtures, outputs and logs live under the workdir (shared by parent and children)."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def base(self) -> Path:
        return self.models / "base"

    def lora(self, i: int) -> Path:
        return self.models / f"lora{i}"

    def full(self, i: int) -> Path:
        return self.models / f"full{i}"

    def experts(self, kind: str) -> list[tuple[str, Path]]:
        """(name, dir) of the 4 experts of one kind, named e1..e4 as in WEIGHTS."""
        make = self.lora if kind == "lora" else self.full
        return [(f"e{i}", make(i)) for i in range(1, N_EXPERTS + 1)]

    def out(self, name: str) -> Path:
        return self.root / "out" / name

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def fixture_meta(self) -> Path:
        return self.models / "fixtures.json"

    @property
    def hf_home(self) -> Path:
        return self.root / "hf-home"


def dir_bytes(path: Path, exclude: Sequence[Path] = ()) -> int:
    """Total size of the regular files under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    skip = [p.resolve() for p in exclude]
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink() and not any(p.resolve().is_relative_to(s) for s in skip):
            total += p.stat().st_size
    return total


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the safetensors weights of a checkpoint: the 'model size on disk'."""
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def parse_params(text: str) -> int:
    """``300M``, ``1.5B``, ``50000000`` -> a parameter count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--params {text!r}: write e.g. 300M, 1.5B or 50000000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


# ------------------------------------------------------------------------------ children: fixtures


def _import_stack() -> None:
    """Import everything any measured path uses, so every child starts from the same baseline.

    The Qwen2-VL modeling module is imported explicitly: transformers imports it lazily on the
    first load, which would otherwise be charged to whichever path loads a model first.
    """
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import transformers
    import transformers.models.qwen2_vl.modeling_qwen2_vl  # noqa: F401
    from merge_proxy import engine, experts, export, inplace, naming  # noqa: F401
    from transformers import AutoModelForImageTextToText  # noqa: F401


def _spec_for(target_params: int) -> TinyVLMSpec:
    """The TinyVLMSpec of SHAPE with the fewest layers giving at least ``target_params``.

    Parameters are counted on the meta device (no memory) for 1 and 2 layers: per-layer and fixed
    parts follow, and the layer count is solved for.
    """
    import torch
    from merge_proxy.testing import tiny_vlm
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = tiny_vlm.build_tokenizer(int(SHAPE["bpe_vocab_size"]))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tiny_vlm.SPECIAL_TOKENS}

    def count(layers: int) -> int:
        spec = tiny_vlm.TinyVLMSpec(num_hidden_layers=layers, **SHAPE)
        with torch.device("meta"):  # _config: the very config build_tiny_vlm writes for this spec
            model = Qwen2VLForConditionalGeneration(tiny_vlm._config(spec, len(tokenizer), ids))
        return sum(p.numel() for p in model.parameters())

    one, two = count(1), count(2)
    per_layer, fixed = two - one, one - (two - one)
    layers = max(1, math.ceil((target_params - fixed) / per_layer))
    return tiny_vlm.TinyVLMSpec(num_hidden_layers=layers, **SHAPE)


def _to_bf16_checkpoint(model_dir: Path) -> None:
    """Cast a float32 checkpoint's floating tensors to bf16 in place and say so in config.json.

    build_tiny_vlm writes float32; real VLM checkpoints (and so the sizes that matter here) are bf16.
    """
    import torch
    from safetensors.torch import load_file, save_file

    for file in sorted(model_dir.glob("*.safetensors")):
        tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(file).items()}
        save_file(tensors, file, metadata={"format": "pt"})
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = weight_bytes(model_dir)
        index.write_text(json.dumps(data, indent=2) + "\n")
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for sub in (cfg, cfg.get("text_config"), cfg.get("vision_config")):
        if isinstance(sub, dict):
            sub["dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def child_build(layout: Layout, args: argparse.Namespace) -> dict:
    """Write the base (bf16), 4 LoRA experts and 4 full bf16 experts; not a measured path."""
    import torch
    from merge_proxy.testing.experts import make_full_expert, make_lora_expert
    from merge_proxy.testing.tiny_vlm import build_tiny_vlm

    started = time.perf_counter()
    spec = _spec_for(args.params)
    vlm = build_tiny_vlm(layout.base, seed=0, spec=spec)
    _to_bf16_checkpoint(layout.base)
    print(f"base: {vlm.num_parameters / 1e6:.1f}M parameters, {spec.num_hidden_layers} layers", flush=True)
    for i in range(1, N_EXPERTS + 1):
        make_lora_expert(layout.base, layout.lora(i), seed=i, r=LORA_R, lora_alpha=LORA_ALPHA)
        print(f"lora expert {i} written", flush=True)
    for i in range(1, N_EXPERTS + 1):
        make_full_expert(layout.base, layout.full(i), seed=100 + i, dtype=torch.bfloat16)
        print(f"full expert {i} written", flush=True)
    meta = {
        "num_parameters": vlm.num_parameters,
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
        "base_weight_bytes": weight_bytes(layout.base),
        "lora_weight_bytes": sum((d / "adapter_model.safetensors").stat().st_size for _, d in layout.experts("lora")),
        "full_weight_bytes": sum(weight_bytes(d) for _, d in layout.experts("full")),
        "build_s": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }
    layout.fixture_meta.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ------------------------------------------------------------------------- children: measured paths


def _load_model(path: Path, dtype: torch.dtype | str) -> torch.nn.Module:
    """How every path (ours, the reference, the eval load) loads a checkpoint with transformers."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()


def _io_write_bytes() -> int:
    import psutil

    return int(psutil.Process().io_counters().write_bytes)


def child_baseline(layout: Layout, args: argparse.Namespace) -> dict:
    """Imports only: the RSS every child pays before doing any work."""
    return {"wall_s": 0.0, "stages": {}}


def child_base_load(layout: Layout, args: argparse.Namespace) -> dict:
    """A fresh load of the base in bf16: the yardstick for the in-memory proxy.

    transformers 5 hands out bf16 parameters as views of the memory-mapped checkpoint, so the load
    itself reads almost nothing; reading every weight once (what a first forward pass pays anyway)
    is timed as a separate stage so that the lazy load can be told apart from a materialised one.
    """
    import torch

    t0 = time.perf_counter()
    model = _load_model(layout.base, torch.bfloat16)
    t1 = time.perf_counter()
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    t2 = time.perf_counter()
    del model
    return {"wall_s": t1 - t0, "stages": {"load": t1 - t0, "read_all_weights": t2 - t1}, "touch_s": t2 - t1}


def _ours_export(layout: Layout, kind: str, out: Path, max_shard_bytes: int | None = None) -> dict:
    """resolve -> build_plan -> export_full (dtype auto = the base's bf16), timed per stage."""
    from merge_proxy.engine import MergeMethod, build_plan
    from merge_proxy.experts import ExpertSpec, resolve, resolve_experts
    from merge_proxy.export import DEFAULT_MAX_SHARD_BYTES, export_full

    io0 = _io_write_bytes()
    t0 = time.perf_counter()
    base = resolve(ExpertSpec(str(layout.base)), for_base=True)
    experts = resolve_experts([ExpertSpec(str(p), name=n) for n, p in layout.experts(kind)])
    plan = build_plan(base, experts)
    method = MergeMethod()
    mixture = plan.mixture(WEIGHTS, method)
    t1 = time.perf_counter()
    shard = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
    result = export_full(plan, mixture, method, out, dtype="auto", max_shard_bytes=shard)
    t2 = time.perf_counter()
    return {
        "wall_s": t2 - t0,
        "stages": {"plan": t1 - t0, "export": t2 - t1},
        "bytes_written": result.bytes_written,
        "io_write_bytes": _io_write_bytes() - io0,
        "tensors_merged": result.tensors_merged,
        "max_shard_bytes": shard,
        "shards": len(list(out.glob("*.safetensors"))),
    }


def child_ours_lora(layout: Layout, args: argparse.Namespace) -> dict:
    return _ours_export(layout, "lora", layout.out("ours_lora"))


def child_ours_full(layout: Layout, args: argparse.Namespace) -> dict:
    return _ours_export(layout, "full", layout.out("ours_full"))


def child_ours_full_shards(layout: Layout, args: argparse.Namespace) -> dict:
    """The same export with shards of a quarter of the model: how much of the peak is the shard."""
    base_bytes = json.loads(layout.fixture_meta.read_text())["base_weight_bytes"]
    return _ours_export(layout, "full", layout.out("ours_full_shards"), max_shard_bytes=max(base_bytes // 4, 1))


def child_load_ours_lora(layout: Layout, args: argparse.Namespace) -> dict:
    """The eval load of our LoRA merge (bf16, dtype from its config), to compare like for like."""
    t0 = time.perf_counter()
    model = _load_model(layout.out("ours_lora"), "auto")
    wall = time.perf_counter() - t0
    del model
    return {"wall_s": wall, "stages": {"eval_load": wall}}


def _reference_average(base_model: torch.nn.Module, experts: list[torch.nn.Module], weights: Sequence[float]) -> None:
    """theta_0 + sum_i w_i (theta_i - theta_0), in float32, written into ``base_model`` in place."""
    import torch

    base_sd = base_model.state_dict()
    expert_sds = [m.state_dict() for m in experts]
    with torch.no_grad():
        for key, theta0 in base_sd.items():
            if not theta0.is_floating_point():
                continue
            delta = torch.zeros_like(theta0)
            for w, sd in zip(weights, expert_sds):
                delta.add_(sd[key] - theta0, alpha=w)
            theta0.add_(delta)


def child_ref_lora(layout: Layout, args: argparse.Namespace) -> dict:
    """The paper repo's pipeline: PEFT export of each expert, float32 average, save, eval load."""
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor

    root = layout.out("ref_lora")
    io0 = _io_write_bytes()
    t0 = time.perf_counter()
    exported: list[Path] = []
    for name, adapter in layout.experts("lora"):
        model = _load_model(layout.base, torch.bfloat16)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(root / f"full-{name}")
        exported.append(root / f"full-{name}")
        del model, merged
    t1 = time.perf_counter()
    base_model = _load_model(layout.base, torch.float32)
    experts = [_load_model(p, torch.float32) for p in exported]
    t2 = time.perf_counter()
    _reference_average(base_model, experts, [WEIGHTS[n] for n, _ in layout.experts("lora")])
    del experts
    t3 = time.perf_counter()
    base_model.save_pretrained(root / "merged")
    AutoProcessor.from_pretrained(layout.base).save_pretrained(root / "merged")
    del base_model
    t4 = time.perf_counter()
    model = _load_model(root / "merged", "auto")
    t5 = time.perf_counter()
    dtype = str(next(model.parameters()).dtype)
    del model
    return {
        "wall_s": t5 - t0,
        "stages": {
            "peft_export_x4": t1 - t0, "load_5_fp32": t2 - t1, "average_fp32": t3 - t2,
            "save_fp32": t4 - t3, "eval_load": t5 - t4,
        },
        "bytes_written": dir_bytes(root),
        "io_write_bytes": _io_write_bytes() - io0,
        "eval_dtype": dtype,
    }


def child_inplace(layout: Layout, args: argparse.Namespace) -> dict:
    """The in-memory proxy as the lmms-eval model builds it: the plan prefetched while the base loads."""
    import torch
    from merge_proxy.engine import MergeMethod
    from merge_proxy.experts import ExpertSpec, resolve, resolve_experts
    from merge_proxy.inplace import InPlaceMerger, PlanPrefetch

    io0 = _io_write_bytes()
    t0 = time.perf_counter()
    base = resolve(ExpertSpec(str(layout.base)), for_base=True)
    experts = resolve_experts([ExpertSpec(str(p), name=n) for n, p in layout.experts("lora")])
    prefetch = PlanPrefetch(base, experts)
    model = _load_model(layout.base, torch.bfloat16)
    t1 = time.perf_counter()
    plan = prefetch.result(model)
    t2 = time.perf_counter()
    merger = InPlaceMerger(model, plan)
    t3 = time.perf_counter()
    merger.merge(WEIGHTS, MergeMethod())
    t4 = time.perf_counter()
    merger.remerge(REMERGE_WEIGHTS)
    t5 = time.perf_counter()
    return {
        "wall_s": t4 - t0,
        "stages": {"load": t1 - t0, "plan_wait": t2 - t1, "merger": t3 - t2, "merge": t4 - t3, "remerge": t5 - t4},
        "remerge_s": t5 - t4,
        "io_write_bytes": _io_write_bytes() - io0,
        "theta0_copy_bytes": merger.base_copy_bytes,
    }


def _bf16_ulps(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| in bf16 spacings (ulps) at |reference|; 0.5 ulp = one bf16 rounding.

    Magnitudes are floored at the tensor's RMS: near-zero elements have tiny spacings that would
    turn a negligible absolute difference into a huge ulp count.
    """
    import torch

    ref = reference.double()
    floor = float(ref.pow(2).mean().sqrt()) or 1e-30
    spacing = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(floor))) - 7)
    return float(((ours.double() - ref).abs() / spacing).max())


def _compare_checkpoints(ours_dir: Path, ref_dir: Path) -> dict:
    """Every tensor of our output against another pipeline's: do both compute the same merge?"""
    import torch
    from merge_proxy.naming import read_safetensors_index
    from safetensors import safe_open

    ours, ref = read_safetensors_index(ours_dir), read_safetensors_index(ref_dir)
    worst_ulps, worst_abs, worst_key = 0.0, 0.0, ""
    for key, file in ours.items():
        if key not in ref:
            return {"ok": False, "error": f"{key} missing from {ref_dir.name}"}
        with safe_open(file, framework="pt") as fa, safe_open(ref[key], framework="pt") as fb:
            a, b = fa.get_tensor(key), fb.get_tensor(key)
        if not a.is_floating_point():
            continue
        ulps = _bf16_ulps(a, b)
        if ulps > worst_ulps:
            worst_ulps, worst_key = ulps, key
        worst_abs = max(worst_abs, float((a.double() - b.double()).abs().max()))
    extra = sorted(set(ref) - set(ours))
    return {"ok": not extra, "tensors": len(ours), "max_abs_diff": worst_abs, "max_bf16_ulps": worst_ulps,
            "worst_tensor": worst_key, "only_in_reference": extra[:5], "dtype_note": str(torch.bfloat16)}


def child_verify_lora(layout: Layout, args: argparse.Namespace) -> dict:
    return _compare_checkpoints(layout.out("ours_lora"), layout.out("ref_lora") / "merged")


def child_verify_full(layout: Layout, args: argparse.Namespace) -> dict:
    return _compare_checkpoints(layout.out("ours_full"), layout.out("mergekit"))


CHILDREN: dict[str, Callable[[Layout, argparse.Namespace], dict]] = {
    "build": child_build,
    "baseline": child_baseline,
    "base_load": child_base_load,
    "ours_lora": child_ours_lora,
    "load_ours_lora": child_load_ours_lora,
    "ref_lora": child_ref_lora,
    "ours_full": child_ours_full,
    "ours_full_shards": child_ours_full_shards,
    "inplace": child_inplace,
    "verify_lora": child_verify_lora,
    "verify_full": child_verify_full,
}


def run_child_main(args: argparse.Namespace) -> int:
    """Entry point of ``--measure NAME``: imports, run, write the result JSON, exit."""
    _import_stack()
    layout = Layout(Path(args.workdir))
    result = CHILDREN[args.measure](layout, args)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------------------ parent: processes


@dataclass
class ProcessStats:
    """What the parent observed of one child process."""

    rc: int
    process_s: float
    """Wall time from spawn to exit, interpreter start and imports included."""
    peak_rss: int
    """ru_maxrss of the child (os.wait4), in bytes: anonymous + file-backed + shared pages."""
    peak_anon: int
    """Largest sampled RssAnon: memory the process really allocated (not file pages)."""
    peak_file: int
    """Largest sampled RssFile: memory-mapped files (safetensors), droppable by the kernel."""
    cpu_s: float
    """user + system CPU seconds of the child (and its waited-for children)."""
    others_cpu_s: float | None
    """CPU seconds the rest of the machine used meanwhile (/proc/stat): >0 means the timing was shared."""
    log: Path


class _MemorySampler(threading.Thread):
    """Polls /proc/PID/status for RssAnon and RssFile until stopped (Linux; zeros elsewhere)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak_anon = 0
        self.peak_file = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                text = self.path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_anon = max(self.peak_anon, int(line.split()[1]) * 1024)
                elif line.startswith("RssFile:"):
                    self.peak_file = max(self.peak_file, int(line.split()[1]) * 1024)
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _drain(stream, log: Path) -> threading.Thread:
    """Copy a child's output to its log from the parent, so the child's own write_bytes stay clean."""

    def pump() -> None:
        with log.open("wb") as fh:
            for chunk in iter(lambda: stream.read1(65536), b""):
                fh.write(chunk)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def cpu_busy_s() -> float | None:
    """Machine-wide busy CPU seconds so far (/proc/stat: all but idle and iowait), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_process(cmd: Sequence[str], log: Path, env: dict[str, str], timeout_s: float = CHILD_TIMEOUT_S) -> ProcessStats:
    """Run one child to completion and read its own rusage (os.wait4), peak memory and wall time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    busy0 = cpu_busy_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    sampler = _MemorySampler(proc.pid)
    sampler.start()
    pump = _drain(proc.stdout, log)
    killer = threading.Timer(timeout_s, proc.kill)
    killer.start()
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    elapsed = time.perf_counter() - t0
    busy1 = cpu_busy_s()
    cpu = rusage.ru_utime + rusage.ru_stime
    others = max(0.0, busy1 - busy0 - cpu) if busy0 is not None and busy1 is not None else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    pump.join(timeout=10)
    proc.stdout.close()
    return ProcessStats(
        rc=proc.returncode, process_s=elapsed, peak_rss=rusage.ru_maxrss * 1024,
        peak_anon=sampler.peak_anon, peak_file=sampler.peak_file, cpu_s=cpu, others_cpu_s=others, log=log,
    )


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------ parent: measurements


@dataclass
class Measurement:
    """One measured path: the child's own timings plus what the parent saw of the process."""

    name: str
    ok: bool
    wall_s: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    process_s: float | None = None
    peak_rss: int | None = None
    peak_anon: int | None = None
    peak_file: int | None = None
    cpu_s: float | None = None
    others_cpu_s: float | None = None
    bytes_written: int | None = None
    io_write_bytes: int | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None


class Bench:
    """The parent: spawns children, keeps their results, cleans outputs between runs."""

    def __init__(self, args: argparse.Namespace, layout: Layout) -> None:
        self.args = args
        self.layout = layout
        self.env = self._child_env()
        self.results: dict[str, Measurement] = {}

    def _child_env(self) -> dict[str, str]:
        """Offline, quiet, and an HF cache inside the workdir: nothing outside it is touched."""
        env = dict(os.environ)
        env.update(
            HF_HOME=str(self.layout.hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
            TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", CUDA_VISIBLE_DEVICES="",
            PYTHONUNBUFFERED="1",
        )
        if self.args.threads > 0:
            env.update(OMP_NUM_THREADS=str(self.args.threads), MKL_NUM_THREADS=str(self.args.threads))
        return env

    def child(self, name: str, extra_args: Sequence[str] = ()) -> tuple[ProcessStats, dict | None]:
        """Run ``--measure name`` in a fresh interpreter (the same one as this script)."""
        result = self.layout.results / f"{name}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", name, "--workdir", str(self.layout.root),
               "--result", str(result), "--params", str(self.args.params), *extra_args]
        stats = run_process(cmd, self.layout.logs / f"{name}.log", self.env)
        data = json.loads(result.read_text()) if stats.rc == 0 and result.is_file() else None
        return stats, data

    def measure(self, name: str, outputs: Sequence[Path] = (), inputs: Iterable[Path] = ()) -> Measurement:
        """Best of --repeat runs of one child (by its own wall time); outputs removed before each run."""
        best: Measurement | None = None
        for _ in range(self.args.repeat):
            for out in outputs:
                shutil.rmtree(out, ignore_errors=True)
            warm_page_cache(inputs)
            stats, data = self.child(name)
            m = self._to_measurement(name, stats, data)
            if not m.ok:
                best = m
                break
            if best is None or (m.wall_s or 0) < (best.wall_s or 0):
                best = m
        assert best is not None
        self.results[name] = best
        status = f"{best.wall_s:.2f} s" if best.ok else f"FAILED: {best.error}"
        print(f"  {name:<16} {status}", flush=True)
        return best

    @staticmethod
    def _to_measurement(name: str, stats: ProcessStats, data: dict | None) -> Measurement:
        if data is None:
            return Measurement(name, ok=False, process_s=stats.process_s,
                               error=f"exit {stats.rc}; log {stats.log}:\n{log_tail(stats.log)}")
        known = {"wall_s", "stages", "bytes_written", "io_write_bytes"}
        return Measurement(
            name, ok=True, wall_s=data.get("wall_s"), stages=data.get("stages", {}), process_s=stats.process_s,
            peak_rss=stats.peak_rss, peak_anon=stats.peak_anon, peak_file=stats.peak_file,
            cpu_s=stats.cpu_s, others_cpu_s=stats.others_cpu_s,
            bytes_written=data.get("bytes_written"), io_write_bytes=data.get("io_write_bytes"),
            extra={k: v for k, v in data.items() if k not in known},
        )


def warm_page_cache(paths: Iterable[Path]) -> None:
    """Read every input file once so that no path pays for cold disk reads (and none gains)."""
    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file():
                with p.open("rb") as fh:
                    while fh.read(16 * 1024 * 1024):
                        pass


# ------------------------------------------------------------------------------ parent: mergekit


@dataclass
class MergekitSetup:
    """A venv with mergekit, or why there is none."""

    venv: Path | None
    install_s: float | None = None
    reused: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None


def setup_mergekit(args: argparse.Namespace, layout: Layout) -> MergekitSetup:
    """mergekit in its own venv (it pins its own torch/transformers), time-boxed.

    Never installed into the project's venv. ``--mergekit-venv`` reuses an existing venv (and
    installs there when it lacks mergekit); otherwise the venv lives under the workdir.
    """
    if args.skip_mergekit:
        return MergekitSetup(None, skipped="--skip-mergekit")
    venv = Path(args.mergekit_venv) if args.mergekit_venv else layout.root / "mergekit-venv"
    exe = venv / "bin" / "mergekit-yaml"
    started = time.perf_counter()
    reused = exe.is_file()
    if not reused:
        print(f"installing {MERGEKIT_REQUIREMENT} into {venv} (time box {args.mergekit_timeout} s) ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                           timeout=120)
            log = layout.logs / "mergekit-install.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as fh:
                proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", MERGEKIT_REQUIREMENT],
                                      stdout=fh, stderr=subprocess.STDOUT, timeout=args.mergekit_timeout,
                                      check=False)
        except subprocess.TimeoutExpired:
            return MergekitSetup(None, skipped=f"pip install {MERGEKIT_REQUIREMENT} did not finish within "
                                 f"{args.mergekit_timeout} s")
        except subprocess.CalledProcessError as err:
            return MergekitSetup(None, skipped=f"could not create a venv: {err.stderr.decode(errors='replace')[-300:]}")
        if proc.returncode != 0 or not exe.is_file():
            return MergekitSetup(None, skipped=f"pip install {MERGEKIT_REQUIREMENT} failed (see {log}): "
                                 f"{log_tail(log, 3)}")
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'), m.version('transformers'))"],
        capture_output=True, text=True, check=False,
    )
    names = ("mergekit", "torch", "transformers")
    versions = dict(zip(names, probe.stdout.split())) if probe.returncode == 0 else {}
    return MergekitSetup(venv, install_s=time.perf_counter() - started, reused=reused, versions=versions)


def _mergekit_config(experts: Sequence[tuple[str, Path]], path: Path) -> Path:
    """A linear merge with our weights; float32 arithmetic and bf16 output, as ours does."""
    lines = ["merge_method: linear", "models:"]
    for name, model_dir in experts:
        lines += [f"  - model: {model_dir}", "    parameters:", f"      weight: {WEIGHTS[name]}"]
    lines += ["dtype: float32", "out_dtype: bfloat16", ""]
    path.write_text("\n".join(lines))
    return path


def _patched_experts(layout: Layout) -> list[tuple[str, Path]]:
    """Copies of the full experts (weights hard-linked) whose config.json also has top-level
    ``num_hidden_layers``: transformers 5 keeps it in ``text_config`` only, where mergekit's
    qwen2_vl architecture does not look."""
    patched = []
    for name, src in layout.experts("full"):
        dst = layout.root / "mergekit-inputs" / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and f.name != "config.json":
                os.link(f, dst / f.name)
        cfg = json.loads((src / "config.json").read_text())
        cfg.setdefault("num_hidden_layers", cfg.get("text_config", {}).get("num_hidden_layers"))
        (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        patched.append((name, dst))
    return patched


def _failure_reason(log: Path) -> str:
    """The exception line of a failed mergekit run (its message embeds a whole config: keep the ends)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    exc = next((ln for ln in reversed(lines) if re.match(r"^\w+(Error|Exception)\b", ln)), None)
    last = lines[-1].strip() if lines else "no output"
    if exc and exc.strip() != last:
        return f"{exc.strip()[:100]} ... {last[:160]}"
    return (exc or last)[:260]


#: Runs mergekit-yaml's own click entry point in-process after its imports, so that its time is
#: measured exactly as ours is (imports excluded) instead of by subtracting a noisy startup time.
MERGEKIT_DRIVER = """\
import json, sys, time
from mergekit.scripts.run_yaml import main  # everything mergekit-yaml imports
result, argv = sys.argv[1], sys.argv[2:]
if argv:
    t0 = time.perf_counter()
    main.main(args=argv, prog_name="mergekit-yaml", standalone_mode=False)
    wall = time.perf_counter() - t0
else:
    wall = 0.0
with open(result, "w") as fh:
    json.dump({"wall_s": wall}, fh)
"""


def _mergekit_process(bench: Bench, setup: MergekitSetup, label: str, argv: Sequence[str]) -> Measurement:
    """One mergekit process (no argv: imports only); its in-process wall time plus what the parent saw."""
    layout = bench.layout
    driver = layout.root / "mergekit_driver.py"
    driver.write_text(MERGEKIT_DRIVER)
    result = layout.results / f"{label}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    stats = run_process([str(setup.venv / "bin" / "python"), str(driver), str(result), *argv],
                        layout.logs / f"{label}.log", bench.env)
    if stats.rc != 0 or not result.is_file():
        return Measurement(label, ok=False, process_s=stats.process_s, error=_failure_reason(stats.log))
    return Measurement(
        label, ok=True, wall_s=json.loads(result.read_text())["wall_s"], process_s=stats.process_s,
        peak_rss=stats.peak_rss, peak_anon=stats.peak_anon, peak_file=stats.peak_file, cpu_s=stats.cpu_s,
        others_cpu_s=stats.others_cpu_s,
    )


def run_mergekit(bench: Bench, setup: MergekitSetup) -> None:
    """``mergekit-yaml config out --lazy-unpickle`` on the 4 full experts (best of --repeat).

    When the unmodified experts fail, the failure and its reason are recorded and the merge is
    retried once on copies whose config.json is patched, so that a speed comparison still exists.
    """
    layout = bench.layout
    bench.results["mergekit_baseline"] = _mergekit_process(bench, setup, "mergekit_baseline", [])
    out = layout.out("mergekit")
    attempts = [("mergekit", layout.experts("full"), "unmodified experts")]
    for label, experts, note in attempts:  # may grow by one: the patched retry
        config = _mergekit_config(experts, layout.root / f"{label}.yml")
        best: Measurement | None = None
        for _ in range(bench.args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            warm_page_cache([d for _, d in experts])
            m = _mergekit_process(bench, setup, label, [str(config), str(out), "--lazy-unpickle"])
            m.extra["inputs"] = note
            if not m.ok:
                best = m
                break
            m.bytes_written = dir_bytes(out)
            if best is None or m.wall_s < (best.wall_s or 0):
                best = m
        assert best is not None
        bench.results[label] = best
        print(f"  {label:<16} {f'{best.wall_s:.2f} s' if best.ok else 'FAILED: ' + (best.error or '')}", flush=True)
        if best.ok:
            bench.results["mergekit_used"] = best
        elif label == "mergekit":
            attempts.append(("mergekit_patched", _patched_experts(layout),
                             "configs patched: top-level num_hidden_layers"))


# ------------------------------------------------------------------------------ parent: report


@dataclass
class Target:
    name: str
    value: float | None
    goal: str
    passed: bool | None
    detail: str


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def evaluate_targets(r: dict[str, Measurement], meta: dict) -> list[Target]:
    """The four targets of the benchmark, each with the numbers it is computed from."""
    targets: list[Target] = []
    ours, ref, load = r.get("ours_lora"), r.get("ref_lora"), r.get("load_ours_lora")
    if ours and ref and ours.ok and ref.ok:
        ours_total = ours.wall_s + (load.wall_s if load and load.ok else 0.0)
        ref_total = ref.wall_s
        speedup = _ratio(ref_total, ours_total)
        targets.append(Target(
            "1. LoRA merge: reference / ours (both incl. eval load)", speedup, ">= 5x",
            speedup is not None and speedup >= 5,
            f"ref {ref_total:.1f} s vs ours {ours.wall_s:.1f} s export + {ours_total - ours.wall_s:.1f} s eval load; "
            f"export-only ratio (ref minus its eval load, vs ours export) "
            f"{_ratio(ref_total - ref.stages.get('eval_load', 0.0), ours.wall_s):.1f}x",
        ))
    mk, ours_full = r.get("mergekit_used") or r.get("mergekit"), r.get("ours_full")
    if mk is not None and ours_full and ours_full.ok:
        if mk.ok:
            ratio = _ratio(mk.wall_s, ours_full.wall_s)
            targets.append(Target(
                "2. full-expert merge: mergekit / ours", ratio, "> 1x", ratio is not None and ratio > 1,
                f"mergekit {mk.wall_s:.1f} s ({mk.extra.get('inputs')}) vs ours {ours_full.wall_s:.1f} s, both "
                f"after imports; spawn to exit {mk.process_s:.1f} s vs {ours_full.process_s:.1f} s",
            ))
        else:
            targets.append(Target("2. full-expert merge: mergekit / ours", None, "> 1x", None,
                                  f"mergekit failed: {mk.error}"))
    base_bytes = meta.get("base_weight_bytes")
    baseline = r.get("baseline")
    if ours_full and ours_full.ok and base_bytes and baseline and baseline.ok:
        above = ours_full.peak_rss - baseline.peak_rss
        anon = ours_full.peak_anon - baseline.peak_anon
        mapped = ours_full.peak_file - baseline.peak_file
        ratio = above / base_bytes
        targets.append(Target(
            "3. full-expert export: peak RSS above baseline / base size", ratio, "< 1.5x", ratio < 1.5,
            f"ru_maxrss {fmt_gib(ours_full.peak_rss)} - baseline {fmt_gib(baseline.peak_rss)} = {fmt_gib(above)} vs "
            f"base weights {fmt_gib(base_bytes)} on disk (raw ru_maxrss {ours_full.peak_rss / base_bytes:.2f}x); "
            f"sampled peaks above baseline: RssAnon (allocated) {fmt_gib(anon)} = {anon / base_bytes:.2f}x, "
            f"RssFile (memory-mapped checkpoints) {fmt_gib(mapped)} = {mapped / base_bytes:.2f}x"
            + _shards_note(r.get("ours_full_shards"), baseline, base_bytes),
        ))
    ip, bl = r.get("inplace"), r.get("base_load")
    if ip and bl and ip.ok and bl.ok:
        touched = bl.wall_s + bl.extra.get("touch_s", 0.0)
        ready = _ratio(ip.wall_s, bl.wall_s)
        targets.append(Target("4a. ready in-memory proxy / base load", ready, "<= 1.3x",
                              ready is not None and ready <= 1.3,
                              f"{ip.wall_s:.2f} s vs {bl.wall_s:.2f} s (stages: "
                              + ", ".join(f"{k} {v:.2f}" for k, v in ip.stages.items() if k != "remerge")
                              + f"); vs load + reading every weight once ({touched:.2f} s): "
                              f"{_ratio(ip.wall_s, touched):.2f}x"))
        rem_s = ip.extra.get("remerge_s")
        rem = _ratio(rem_s, bl.wall_s)
        targets.append(Target("4b. re-merge / fresh base load", rem, "< 0.3x", rem is not None and rem < 0.3,
                              f"{rem_s:.2f} s vs {bl.wall_s:.2f} s; vs load + reading every weight once "
                              f"({touched:.2f} s): {_ratio(rem_s, touched):.2f}x"))
        written = (ip.io_write_bytes or 0) + (ip.extra.get("workdir_delta_bytes") or 0)
        targets.append(Target("4c. bytes written by the in-memory path", float(written), "== 0", written == 0,
                              f"process write_bytes {ip.io_write_bytes}, workdir size change "
                              f"{ip.extra.get('workdir_delta_bytes')}"))
    return targets


def _shards_note(m: Measurement | None, baseline: Measurement, base_bytes: int) -> str:
    if m is None or not m.ok:
        return ""
    above = m.peak_rss - baseline.peak_rss
    anon = m.peak_anon - baseline.peak_anon
    return (f"; with {m.extra.get('shards')} shards of <= {fmt_bytes(m.extra.get('max_shard_bytes'))}: "
            f"{fmt_gib(above)} above baseline ({above / base_bytes:.2f}x), RssAnon above baseline "
            f"{fmt_gib(anon)} ({anon / base_bytes:.2f}x)")


def fmt_gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n < 1024**2:
        return f"{int(n)} B"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"


ROWS: tuple[tuple[str, str], ...] = (
    ("baseline", "interpreter + imports only"),
    ("base_load", "4: load base (bf16)"),
    ("inplace", "4: in-memory proxy ready (LoRA x4)"),
    ("ours_lora", "1: ours export_full, LoRA x4"),
    ("load_ours_lora", "1: eval load of ours (bf16)"),
    ("ref_lora", "1: reference PEFT x4 + fp32 avg + load"),
    ("ours_full", "2/3: ours export_full, full x4"),
    ("ours_full_shards", "3: same, shards of 1/4 model (info)"),
    ("mergekit_baseline", "2: mergekit venv imports only"),
    ("mergekit", "2: mergekit linear, full x4"),
    ("mergekit_patched", "2: mergekit linear, patched cfg"),
)


def format_table(r: dict[str, Measurement], baseline_rss: int | None) -> str:
    """Wall time, peak memory and bytes written of every measured path."""
    head = (f"{'path':<40} {'wall s':>7} {'proc s':>7} {'cpu s':>6} {'other':>6} {'peak RSS':>10} "
            f"{'above base':>10} {'RssAnon':>10} {'RssFile':>10} {'written':>10}")
    lines = [head, "-" * len(head)]
    for key, label in ROWS:
        m = r.get(key)
        if m is None:
            continue
        if not m.ok:
            lines.append(f"{label:<40} FAILED: {(m.error or '').splitlines()[0][:120]}")
            continue
        mk_base = r.get("mergekit_baseline") if key.startswith("mergekit") else None
        base = (mk_base.peak_rss if mk_base and mk_base.ok else None) if key.startswith("mergekit") else baseline_rss
        above = m.peak_rss - base if (m.peak_rss is not None and base is not None) else None
        written = m.bytes_written if m.bytes_written is not None else m.io_write_bytes
        others = "-" if m.others_cpu_s is None else f"{m.others_cpu_s:.1f}"
        lines.append(
            f"{label:<40} {m.wall_s:>7.2f} {m.process_s:>7.2f} {m.cpu_s or 0:>6.1f} {others:>6} "
            f"{fmt_gib(m.peak_rss):>10} {fmt_gib(above):>10} {fmt_gib(m.peak_anon):>10} {fmt_gib(m.peak_file):>10} "
            f"{fmt_bytes(written):>10}"
        )
    return "\n".join(lines)


def contention_warning(r: dict[str, Measurement], threads: int, cpus: int) -> str:
    """Name the paths whose timing shared the cores: their times (and ratios) are not to be trusted.

    A path running ``threads`` threads on ``cpus`` cores leaves ``cpus - threads`` cores free; other
    processes using more than those (plus a margin) took CPU time from it.
    """
    free = max(0, cpus - threads) + CONTENTION_SHARE
    shared = [k for k, m in r.items() if k not in ALIASES and m.ok and m.others_cpu_s is not None
              and m.process_s and m.others_cpu_s > free * m.process_s]
    if not shared:
        return ""
    advice = "Rerun on an idle machine" + (", or with --threads 1." if threads > 1 else ".")
    return (f"WARNING: other processes used the CPU this run needed during {', '.join(shared)} (column 'other'); "
            f"those times are inflated (with {threads} PyTorch threads on {cpus} cores). {advice}")


def format_stages(r: dict[str, Measurement]) -> str:
    lines = []
    for key in ("base_load", "inplace", "ours_lora", "ref_lora", "ours_full", "ours_full_shards", "mergekit",
                "mergekit_patched"):
        m = r.get(key)
        if m and m.ok and m.stages:
            lines.append(f"  {key:<16} " + ", ".join(f"{k} {v:.2f} s" for k, v in m.stages.items()))
    return "\n".join(lines)


def format_targets(targets: Sequence[Target]) -> str:
    lines = []
    for t in targets:
        verdict = "n/a " if t.passed is None else ("PASS" if t.passed else "FAIL")
        value = "-" if t.value is None else (f"{t.value:.0f}" if "bytes" in t.name else f"{t.value:.2f}x")
        lines.append(f"  [{verdict}] {t.name}: {value} (target {t.goal})\n         {t.detail}")
    return "\n".join(lines)


def format_verification(r: dict[str, Measurement]) -> str:
    lines = []
    for key, what in (("verify_lora", "ours (bf16) vs reference (fp32) LoRA merge"),
                      ("verify_full", "ours vs mergekit full-expert merge")):
        m = r.get(key)
        if m is None:
            continue
        if not m.ok:
            lines.append(f"  {what}: check failed to run: {(m.error or '').splitlines()[-1][:200]}")
            continue
        e = m.extra
        lines.append(f"  {what}: {e.get('tensors')} tensors, max |diff| {e.get('max_abs_diff', float('nan')):.3g}, "
                     f"max {e.get('max_bf16_ulps', float('nan')):.2f} bf16 ulps ({e.get('worst_tensor')})"
                     + ("" if e.get("ok", True) else f"; MISMATCH {e.get('error') or e.get('only_in_reference')}"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ parent: main


def run_benchmark(args: argparse.Namespace, layout: Layout) -> dict:
    """All measurements in order; returns the JSON-able report."""
    bench = Bench(args, layout)
    started = time.perf_counter()
    print(f"building fixtures for {args.params / 1e6:.0f}M parameters in {layout.root} ...", flush=True)
    stats, meta = bench.child("build")
    if meta is None:
        raise SystemExit(f"fixture build failed (exit {stats.rc}):\n{log_tail(stats.log, 30)}")
    print(f"  {meta['num_parameters'] / 1e6:.1f}M parameters, base weights {fmt_gib(meta['base_weight_bytes'])}, "
          f"built in {meta['build_s']:.0f} s", flush=True)
    mk = setup_mergekit(args, layout)
    if mk.skipped:
        print(f"mergekit: skipped ({mk.skipped})", flush=True)

    base, loras = [layout.base], [d for _, d in layout.experts("lora")]
    fulls = [d for _, d in layout.experts("full")]
    print("measuring (each path in a fresh process) ...", flush=True)
    bench.measure("baseline")
    bench.measure("base_load", inputs=base)
    # The parent's own logs and the child's result file are not the path's writes; the venv is big.
    not_outputs = [layout.logs, layout.results, layout.root / "mergekit-venv"]
    before = dir_bytes(layout.root, exclude=not_outputs)
    ip = bench.measure("inplace", inputs=base + loras)
    ip.extra["workdir_delta_bytes"] = dir_bytes(layout.root, exclude=not_outputs) - before
    bench.measure("ours_lora", outputs=[layout.out("ours_lora")], inputs=base + loras)
    bench.measure("load_ours_lora", inputs=[layout.out("ours_lora")])
    bench.measure("ref_lora", outputs=[layout.out("ref_lora")], inputs=base + loras)
    if not args.no_verify and bench.results["ours_lora"].ok and bench.results["ref_lora"].ok:
        _record_check(bench, "verify_lora")
    shutil.rmtree(layout.out("ref_lora"), ignore_errors=True)
    shutil.rmtree(layout.out("ours_lora"), ignore_errors=True)
    bench.measure("ours_full", outputs=[layout.out("ours_full")], inputs=base + fulls)
    if mk.venv is not None:
        run_mergekit(bench, mk)
        used = bench.results.get("mergekit_used")
        if not args.no_verify and used is not None and bench.results["ours_full"].ok:
            _record_check(bench, "verify_full")
    shutil.rmtree(layout.out("ours_full"), ignore_errors=True)
    shutil.rmtree(layout.out("mergekit"), ignore_errors=True)
    bench.measure("ours_full_shards", outputs=[layout.out("ours_full_shards")], inputs=base + fulls)
    shutil.rmtree(layout.out("ours_full_shards"), ignore_errors=True)

    targets = evaluate_targets(bench.results, meta)
    return {
        "meta": {
            **meta, "command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": args.quick,
            "repeat": args.repeat, "threads_option": args.threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "versions": _versions(), "mergekit": asdict(mk) | {"venv": str(mk.venv) if mk.venv else None},
            "weights": WEIGHTS, "remerge_weights": REMERGE_WEIGHTS, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
            "page_cache": PAGE_CACHE_NOTE, "total_s": time.perf_counter() - started,
        },
        "measurements": {k: asdict(v) for k, v in bench.results.items()},
        "targets": [asdict(t) for t in targets],
    }


def _record_check(bench: Bench, name: str) -> None:
    stats, data = bench.child(name)
    ok = data is not None
    bench.results[name] = Measurement(name, ok=ok, process_s=stats.process_s, extra=data or {},
                                      error=None if ok else log_tail(stats.log))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "safetensors", "merge-proxy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def print_report(report: dict) -> None:
    meta = report["meta"]
    r = {k: Measurement(**v) for k, v in report["measurements"].items()}
    spec = meta["spec"]
    print()
    print(f"merge_speed: synthetic Qwen2-VL, {meta['num_parameters'] / 1e6:.1f}M parameters "
          f"(hidden {spec['hidden_size']}, intermediate {spec['intermediate_size']}, {spec['num_hidden_layers']} layers), "
          f"bf16 weights {fmt_gib(meta['base_weight_bytes'])} on disk; {N_EXPERTS} LoRA experts (r={LORA_R}, "
          f"alpha={LORA_ALPHA}, {fmt_bytes(meta['lora_weight_bytes'])}), {N_EXPERTS} full bf16 experts")
    v = meta["versions"]
    mkv = meta["mergekit"].get("versions") or {}
    print(f"{meta['cpu_count']} CPUs, torch {v['torch']} ({meta['torch_threads']} threads), transformers "
          f"{v['transformers']}, peft {v['peft']}"
          + (f"; mergekit {mkv.get('mergekit')} (torch {mkv.get('torch')}, transformers {mkv.get('transformers')})"
             if mkv else ""))
    print(PAGE_CACHE_NOTE)
    print("wall s: the path's own perf_counter time in its process, after its imports (mergekit: its "
          "mergekit-yaml entry point called in-process after its imports). proc s: spawn to exit.")
    print("cpu s: user+system CPU of the process; other: CPU seconds the rest of the machine used meanwhile "
          "(non-zero = the timing shared the cores with something else).")
    print("peak RSS: ru_maxrss of the path's process; above base: minus the imports-only process of the same "
          "venv; RssAnon/RssFile: sampled peaks every 20 ms (RssFile = memory-mapped files).")
    print()
    print(format_table(r, r["baseline"].peak_rss if "baseline" in r and r["baseline"].ok else None))
    warning = contention_warning(r, meta["torch_threads"], meta["cpu_count"] or 1)
    if warning:
        print(warning)
    print()
    print("stages:")
    print(format_stages(r))
    verification = format_verification(r)
    if verification:
        print("same result? (max difference over every tensor)")
        print(verification)
    mk = meta["mergekit"]
    if mk.get("skipped"):
        print(f"mergekit: not measured ({mk['skipped']})")
    elif mk.get("reused"):
        print(f"mergekit: own venv {mk['venv']} (reused; installing is not part of any timing)")
    elif mk.get("install_s") is not None:
        print(f"mergekit: own venv {mk['venv']} (installed in {mk['install_s']:.0f} s, not part of any timing)")
    print()
    print("targets:")
    print(format_targets([Target(**t) for t in report["targets"]]))
    print(f"\ntotal benchmark time {meta['total_s']:.0f} s")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=parse_params, default=None, help="model size (default 300M; 50M with --quick)")
    p.add_argument("--workdir", help="working directory (default: a new temporary directory)")
    p.add_argument("--skip-mergekit", action="store_true", help="do not install or run mergekit")
    p.add_argument("--mergekit-venv", help="reuse this venv for mergekit (created/installed if missing; never removed)")
    p.add_argument("--mergekit-timeout", type=int, default=300, help="seconds allowed for pip install mergekit")
    p.add_argument("--quick", action="store_true", help="a ~50M-parameter smoke run")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP/MKL threads of every measured process (default: the libraries' own, all cores); "
                   "1 keeps timings sane when something else is using a core")
    p.add_argument("--repeat", type=int, default=1, help="runs per path; the fastest is reported")
    p.add_argument("--keep", action="store_true", help="keep the workdir (models, outputs, logs)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing our outputs with the others'")
    p.add_argument("--measure", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.params is None:
        args.params = parse_params("50M" if args.quick else "300M")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def cleanup(layout: Layout, json_path: Path) -> None:
    """Remove everything the run made (models, outputs, logs, the mergekit venv) but the JSON report.

    The workdir was empty when the run started (checked in main), so all of it is ours to remove.
    """
    for child in layout.root.iterdir():
        if child == json_path:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        return run_child_main(args)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="merge_speed-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if any(p.name != "merge_speed.json" for p in root.iterdir()):
        raise SystemExit(f"--workdir {root} is not empty; give a new or empty directory")
    layout = Layout(root)
    json_path = root / "merge_speed.json"
    try:
        report = run_benchmark(args, layout)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
        print(f"numbers: {json_path}")
    finally:
        if not args.keep:
            cleanup(layout, json_path)
            print(f"workdir cleaned (kept only {json_path.name}); pass --keep to keep models and logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
