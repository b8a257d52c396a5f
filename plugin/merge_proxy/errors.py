"""The exceptions merge-proxy raises for failures a user can cause.

Every message names the cause and the fix; the CLI prints it as one line and exits non-zero, so no
traceback is needed to act on it.
"""

from __future__ import annotations

import errno


class MergeProxyError(Exception):
    """Base class: a failure caused by inputs or environment, with an actionable message."""

    exit_code: int = 2


class ConfigError(MergeProxyError):
    """A command line, recipe or YAML block is malformed."""


class CheckpointError(MergeProxyError):
    """A weights file cannot be read as the safetensors file it claims to be."""


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


def describe_error(err: Exception) -> str:
    """An exception in one line, its type and the first line of its text: a client error's later
    lines may hold request headers (never the token in a log)."""
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"[:300]


def describe_os_error(err: OSError) -> str:
    """One line for a file-system error the user can fix: what failed, on which path, and the hint."""
    what = err.strerror or str(err)
    path = f" {err.filename}" if err.filename else ""
    hint = {
        "ENOENT": "its parent directory does not exist",
        "ENOTDIR": "a file is in the way of a directory",
        "EEXIST": "a file is in the way",
        "EACCES": "no permission to write there",
        "EROFS": "the file system is read-only",
        "ENOSPC": "the disk is full",
    }.get(errno.errorcode.get(err.errno or 0, ""), "")
    return f"cannot use{path}: {what}" + (f" ({hint}); choose another path" if hint else "")
