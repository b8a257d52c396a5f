"""What tests, the demo and users' own test suites need to run merge-proxy offline, for real.

- :func:`build_tiny_vlm` (``merge_proxy.testing.tiny_vlm``): a tiny random Qwen2-VL checkpoint, or
  Qwen2.5-VL or InternVL3.5 (``TinyVLMSpec(family=...)``);
- :func:`write_domains` (``merge_proxy.testing.domains``): synthetic visual domains for LLaMA-Factory
  and lmms-eval;
- :class:`HubEmulator` (``merge_proxy.testing.hub``): a Hub-compatible server on 127.0.0.1;
- ``merge_proxy.testing.experts``, ``.training``, ``.lmms``: random experts, tiny LLaMA-Factory
  configs, and a runner for the real lmms-eval CLI.

Names are imported on first use, so ``import merge_proxy.testing`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build_tiny_vlm": "merge_proxy.testing.tiny_vlm",
    "TinyVLMSpec": "merge_proxy.testing.tiny_vlm",
    "write_domains": "merge_proxy.testing.domains",
    "HubEmulator": "merge_proxy.testing.hub",
    "make_lora_expert": "merge_proxy.testing.experts",
    "make_full_expert": "merge_proxy.testing.experts",
    "tiny_sft_config": "merge_proxy.testing.training",
    "run_lmms_eval": "merge_proxy.testing.lmms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'merge_proxy.testing' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
