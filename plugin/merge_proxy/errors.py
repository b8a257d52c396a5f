"""The exceptions merge-proxy raises for failures a user can cause.

Every message names the cause and the fix; the CLI prints it as one line and exits non-zero, so no
traceback is needed to act on it.
"""

from __future__ import annotations


class MergeProxyError(Exception):
    """Base class: a failure caused by inputs or environment, with an actionable message."""

    exit_code: int = 2


class ConfigError(MergeProxyError):
    """A command line, recipe or YAML block is malformed."""


class ResourceError(MergeProxyError):
    """A file shipped with the package (recipe, card template) is missing or unreadable."""


class MissingDependencyError(MergeProxyError):
    """An optional framework (LLaMA-Factory, lmms-eval, vLLM, submitit) is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs {package}, which is not installed; "
            f"install it with: pip install 'merge-proxy[{extra}]'"
        )
        self.package = package
        self.extra = extra
