"""Does vLLM's own LoRA loader accept a `merge-proxy merge --format lora` adapter, tensor for tensor?

Run it in an environment that has vLLM (the `vllm` extra; vLLM pins its own torch, so a separate
venv is simplest). It needs no GPU: it runs vLLM's adapter validation (``PEFTHelper.validate_legal``)
and its checkpoint loader (``LoRAModel.from_local_checkpoint`` with the model class's own name
mapper, on the CPU), then checks that every module vLLM loaded carries exactly our A and B with
scaling 1, and that no module was dropped. Serving the adapter (``LLM(..., enable_lora=True)``)
needs a GPU and is not done here.

    merge-proxy merge --base BASE --expert a=A --expert b=B --weights a=0.5,b=0.5 --format lora --out LORA
    VLLM_PY benchmarks/vllm_lora_check.py --adapter LORA [--architecture Qwen2VLForConditionalGeneration]

Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="a --format lora output directory")
    parser.add_argument("--architecture", default="Qwen2VLForConditionalGeneration",
                        help="vLLM model class whose hf_to_vllm_mapper names the modules")
    args = parser.parse_args()

    import torch
    import vllm
    from safetensors.torch import load_file
    from vllm.config import LoRAConfig
    from vllm.lora import lora_model as lora_model_module
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.models.registry import ModelRegistry

    config = json.loads((args.adapter / "adapter_config.json").read_text())
    print(f"vLLM {vllm.__version__}, torch {torch.__version__}; adapter rank {config['r']}, "
          f"{len(config['target_modules'])} target modules")

    helper = PEFTHelper.from_local_dir(str(args.adapter), max_position_embeddings=None)
    # vLLM's --max-lora-rank takes a few values only; the smallest that holds the adapter's rank.
    max_rank = min(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= config["r"])
    helper.validate_legal(LoRAConfig(max_lora_rank=max_rank))
    print(f"[PASS] PEFTHelper.validate_legal with --max-lora-rank {max_rank}; "
          f"scaling {helper.vllm_lora_scaling_factor}")

    model_cls = ModelRegistry._try_load_model_cls(args.architecture)  # no model config needed
    if model_cls is None:
        print(f"[FAIL] vLLM {vllm.__version__} has no model class {args.architecture!r}")
        return 1
    mapper = getattr(model_cls, "hf_to_vllm_mapper", None)
    if not torch.cuda.is_available():  # vLLM pins host copies for a GPU it assumes; there is none here
        lora_model_module.PIN_MEMORY = False
    ours = load_file(args.adapter / "adapter_model.safetensors")
    expected = {key.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for key in ours}
    lora = LoRAModel.from_local_checkpoint(
        str(args.adapter), expected_lora_modules=expected, peft_helper=helper, device="cpu",
        dtype=torch.float32, weights_mapper=mapper,
    )
    print(f"[PASS] LoRAModel.from_local_checkpoint with {model_cls.__name__}.hf_to_vllm_mapper: "
          f"{len(lora.loras)} modules")

    ours_by_module = {}
    for key, tensor in ours.items():
        module, part = key.rsplit(".lora_", 1)
        ours_by_module.setdefault(module, {})[part.split(".")[0]] = tensor
    failures = []
    if len(lora.loras) != len(ours_by_module):
        failures.append(f"vLLM loaded {len(lora.loras)} modules, the adapter has {len(ours_by_module)}")
    leaves = {}
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
    for line in failures[:20]:
        print(f"[FAIL] {line}")
    if not failures:
        example = next(iter(sorted(lora.loras)))
        print(f"[PASS] every module's A and B (times scaling) are ours, e.g. {example}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
