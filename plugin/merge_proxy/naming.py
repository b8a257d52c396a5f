"""One architecture's parameter names: as saved in checkpoints, in adapters, and in memory.

transformers 5 renames weights on load (Qwen2-VL checkpoints say ``model.layers.0...`` and
``visual...``, the loaded module says ``model.language_model.layers.0...`` and ``model.visual...``)
and renames them back on save. PEFT adapters carry the in-memory module path of whatever transformers
version trained them. Every expert tensor is therefore mapped to the *in-memory* name of a base
parameter through transformers' own conversion mapping, on a model built on the meta device (no
memory, no weights), so the merge works for any architecture transformers can load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from merge_proxy.errors import MergeProxyError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)


class NamingError(MergeProxyError):
    """A checkpoint or adapter tensor cannot be placed on exactly one base parameter."""


@dataclass(frozen=True)
class ParamInfo:
    """A base parameter as the loaded model holds it."""

    name: str
    shape: tuple[int, ...]


class ParameterNames:
    """Maps checkpoint and adapter keys of one architecture to its in-memory parameter names."""

    def __init__(self, config: PretrainedConfig, model: torch.nn.Module) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        self.config = config
        self.model_type: str = config.model_type
        self._prefix: str = getattr(model, "base_model_prefix", "") or ""
        self._meta_state = model.state_dict()
        from transformers.pytorch_utils import Conv1D

        self._conv1d: frozenset[str] = frozenset(
            f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Conv1D)
        )
        self.params: dict[str, ParamInfo] = {
            name: ParamInfo(name, tuple(t.shape)) for name, t in self._meta_state.items()
        }
        conversions = get_model_conversion_mapping(model)
        self._renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
        self._converters = [c for c in conversions if isinstance(c, WeightConverter)]

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ParameterNames:
        """Build the model class named by ``config.architectures`` on the meta device."""
        import transformers

        arch = (getattr(config, "architectures", None) or [None])[0]
        model_cls = getattr(transformers, arch, None) if arch else None
        if model_cls is None:
            raise NamingError(
                f"the base config names architecture {arch!r}, which transformers "
                f"{transformers.__version__} does not provide; use a base model transformers can load"
            )
        with torch.device("meta"):
            model = model_cls._from_config(config)
        return cls(config, model)

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> ParameterNames:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except ValueError as err:  # an unknown model_type: transformers says which, in many lines
            import transformers

            raise NamingError(
                f"transformers {transformers.__version__} cannot read the config of {path}: "
                f"{str(err).splitlines()[0]}; use a base model transformers can load (or upgrade transformers)"
            ) from None
        return cls.from_config(config)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ParameterNames:
        """From a loaded transformers model (the lmms-eval path): no second instantiation."""
        return cls(model.config, model)

    def checkpoint_to_memory(self, key: str, converted_ok: bool = False) -> str | None:
        """The in-memory name of a checkpoint key, or None when it names no base parameter.

        A key that only a WeightConverter (fusing or splitting tensors) would load is not a 1:1
        parameter and is refused: a weight delta cannot be placed on it exactly. An export copying
        the base's untouched tensors passes ``converted_ok`` and gets None for such keys instead.
        """
        from transformers.core_model_loading import rename_source_key

        if key in self.params:
            return key
        renamed, pattern = rename_source_key(
            key, self._renamings, self._converters, prefix=self._prefix, meta_state_dict=self._meta_state
        )
        if pattern is not None:
            if converted_ok:
                return None
            raise NamingError(
                f"checkpoint tensor {key!r} is converted (not only renamed) by transformers when loading "
                f"{self.model_type}; merge-proxy cannot place a weight delta on it"
            )
        return renamed if renamed in self.params else None

    def is_conv1d(self, param: str) -> bool:
        """Whether ``param`` is the weight of a transformers ``Conv1D`` (stored in x out, as GPT-2's)."""
        return param in self._conv1d

    def module_to_param(self, module_path: str, suffix: str = "weight") -> str | None:
        """The in-memory parameter of a LoRA target module path, in either naming generation."""
        direct = f"{module_path}.{suffix}"
        if direct in self.params:
            return direct
        return self.checkpoint_to_memory(direct)


def read_safetensors_index(model_dir: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it (sharded or single-file checkpoints)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        from merge_proxy.jsonfiles import read_json

        data = read_json(index, "download the checkpoint again")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise NamingError(f"{index} has no weight_map; download the checkpoint again")
        return {key: model_dir / fname for key, fname in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("adapter_")]
    if not files:
        return {}
    from merge_proxy.safetensors_io import SafetensorsReader

    # Headers only, with the reader the merge uses (no memory map; a damaged file or an LFS pointer
    # is named as such).
    return {key: f for f in files for key in SafetensorsReader(f).tensors}
