"""merge-proxy: choose fine-tuning data mixtures with merged expert proxies.

The top-level package stays import-light: it pulls in no torch, LLaMA-Factory, lmms-eval or vLLM, so
that the CLI's ``--help`` and the lmms-eval entry point load in milliseconds.
"""

__version__ = "0.1.0.dev0"

from merge_proxy.errors import MergeProxyError

__all__ = ["MergeProxyError", "__version__"]
