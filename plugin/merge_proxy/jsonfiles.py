"""Reading the JSON files users hand us (expert.json, analysis.json, adapter and index files).

A damaged or hand-edited file must end in one line that names the file and the fix, not in a
JSONDecodeError traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from merge_proxy.errors import ConfigError, MergeProxyError


def read_json(path: str | Path, fix: str, error: type[MergeProxyError] = ConfigError) -> Any:
    """The parsed content of ``path``; ``error`` (naming the file, the parse error and ``fix``) when it
    is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from None


def read_adapter_config(path: str | Path, error: type[MergeProxyError] = ConfigError) -> dict[str, Any]:
    """A PEFT adapter_config.json (the one reader for it: the resolver, publish and expert.json's LoRA
    settings all need it whole or with a one-line error)."""
    config = read_json(path, "save the adapter again (PEFT's save_pretrained)", error)
    if not isinstance(config, dict):
        raise error(f"{path} is not a PEFT adapter config (a JSON object); save the adapter again "
                    "(PEFT's save_pretrained)")
    return config
