"""``lmms-eval --model merge_proxy``: a merged proxy that evaluates like the stock backend wrapper.

The model builds lmms-eval's own wrapper for the base (qwen2_vl, qwen2_5_vl, internvl_hf, ...), merges
the experts into the wrapper's loaded module in place with the merge engine, and delegates every
request to it; nothing is written to disk. One instance serves many ``simple_evaluate`` calls and can
be re-merged to other weights (``remerge``) for sweeps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from merge_proxy.chat_template import apply_chat_template, load_chat_template
from merge_proxy.engine import MergeMethod
from merge_proxy.errors import ConfigError
from merge_proxy.experts import ExpertSpec, ResolvedModel, resolve_merge_inputs
from merge_proxy.flags import parse_flag
from merge_proxy.inplace import InPlaceMerger, PlanPrefetch
from merge_proxy.mixture import Mixture, make_mixture

logger = logging.getLogger(__name__)

#: Default backend per base architecture (config.architectures[0]).
DEFAULT_BACKENDS: dict[str, str] = {
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "InternVLForConditionalGeneration": "internvl_hf",
    "InternVLChatModel": "internvl3_5",
    "LlavaForConditionalGeneration": "llava_hf",
    "LlavaOnevisionForConditionalGeneration": "llava_hf",
}
#: Our own model_args; every other key goes to the backend wrapper unchanged.
OWN_ARGS: tuple[str, ...] = (
    "pretrained", "experts", "weights", "method", "scale", "backend", "allow_pickle", "keep_base_on",
    "base_check", "chat_template_from",
)
_UNSUPPORTED_BACKENDS = {"vllm", "vllm_generate", "sglang", "openai", "async_openai", "litellm"}




def _flag(ours: Mapping[str, Any], key: str, default: bool) -> bool:
    """A true/false model_arg; anything else is refused (``base_check=flase`` must not turn the check off)."""
    value = parse_flag(ours.get(key), default)
    if value is None:
        raise ConfigError(f"{key}={ours[key]!r}: write {key}=true or {key}=false")
    return value


def _device(value: Any) -> str | None:
    """``keep_base_on``: checked before the base loads (torch's own error comes after, and lists
    every device type it knows)."""
    if value in (None, ""):
        return None
    import torch

    try:
        return str(torch.device(str(value)))
    except RuntimeError:
        raise ConfigError(f"keep_base_on={value!r}: use cpu, cuda or cuda:N") from None


def _split_list(text: str) -> list[str]:
    """``a;b`` or ``a|b`` (lmms-eval splits model_args on commas, so lists use ``;``)."""
    sep = ";" if ";" in text else "|"
    return [item.strip() for item in str(text).split(sep) if item.strip()]


def parse_model_args(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split lmms-eval's keyword arguments into ours and the backend's; check ours.

    lmms-eval turns ``weights=1`` into the int 1 and ``scale=0`` into 0 before we see them: such
    scalars are taken back as the text the user wrote; a mapping or Mixture from Python stays as is.
    """
    ours = {k: str(v) if isinstance(v, (bool, int, float)) else v
            for k, v in kwargs.items() if k in OWN_ARGS and v is not None}
    backend = {k: v for k, v in kwargs.items() if k not in OWN_ARGS}
    usage = (
        "merge_proxy model_args: pretrained=BASE,experts=NAME=SRC;NAME=SRC,weights=NAME=W;NAME=W"
        "[,method=linear|task_arithmetic][,scale=S][,backend=qwen2_vl|qwen2_5_vl|internvl_hf|...]"
        "[,chat_template_from=MODEL]"
        f"; our keys: {', '.join(OWN_ARGS)}; any other key goes to the backend wrapper"
    )
    for key in ("pretrained", "experts", "weights"):
        if not ours.get(key) or (isinstance(ours[key], str) and not ours[key].strip()):
            raise ConfigError(f"missing {key}=; {usage}")
    return ours, backend


class MergeProxy(lmms):
    """Simple-mode merged proxy (for simple backends such as qwen2_vl)."""

    is_simple = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        try:
            self._setup(**kwargs)
        except Exception as err:
            # lmms-eval's CLI prints "Error during evaluation: <err>" and exits 0; log it as ours too.
            logger.error("merge_proxy: %s", err)
            raise

    # ------------------------------------------------------------------ construction

    def _setup(self, **kwargs: Any) -> None:
        ours, backend_kwargs = parse_model_args(kwargs)
        scale = ours.get("scale")
        try:
            scale_value = 1.0 if scale in (None, "") else float(scale)
        except ValueError:
            raise ConfigError(f"scale={scale!r} is not a number; write e.g. scale=0.5") from None
        self.method = MergeMethod(str(ours.get("method", "linear")), scale_value)
        allow_pickle = _flag(ours, "allow_pickle", False)
        base_check = _flag(ours, "base_check", True)
        keep_base_on = _device(ours.get("keep_base_on"))
        self.base, self.experts = self._resolve(ours["pretrained"], ours["experts"], allow_pickle)
        if not isinstance(ours["weights"], Mixture):  # a typo fails now, not after the base loaded
            try:
                make_mixture(ours["weights"], [e.name for e in self.experts], self.method.name)
            except ConfigError as err:
                # lmms-eval split "weights=a=0.5,b=0.5" at the comma: "b=0.5" arrived as a backend argument
                stray = [k for k in backend_kwargs if f"'{k}'" in str(err)] or _cut_at_commas(
                    kwargs, _backend_parameters(ours.get("backend") or default_backend(self.base)))
                if not stray:
                    raise
                raise ConfigError(
                    f"{err} (lmms-eval splits model_args on commas: separate experts and weights with ';', "
                    f"e.g. experts=a=SRC;b=SRC,weights=a=0.5;b=0.5; these went to the backend as arguments: "
                    f"{', '.join(f'{k}={backend_kwargs[k]}' for k in stray)})"
                ) from None
        self.backend_kwargs = dict(backend_kwargs)
        self.backend_name = ours.get("backend") or default_backend(self.base)
        if self.backend_name in _UNSUPPORTED_BACKENDS:
            raise ConfigError(
                f"backend {self.backend_name!r} keeps the model outside this process; merge_proxy needs an "
                f"in-process transformers backend ({', '.join(sorted(set(DEFAULT_BACKENDS.values())))}), "
                "or export the merge with `merge-proxy merge` and evaluate that"
            )
        # Fetched before the base loads: a wrong source fails in seconds.
        self.chat_template = load_chat_template(str(ours["chat_template_from"])) if ours.get("chat_template_from") else None
        # The experts are read and checked while the backend loads the base.
        prefetch = PlanPrefetch(self.base, self.experts, check_declared_base=base_check)
        self.backend = self._build_backend(self.backend_name, backend_kwargs)
        if self.chat_template is not None:
            apply_chat_template(self.backend, self.chat_template, self.backend_name)
        self.backend.task_dict = self.task_dict
        module = self._module()
        self.merger = InPlaceMerger(module, prefetch.result(module), keep_base_on=keep_base_on)
        self.remerge(ours["weights"])

    @staticmethod
    def _resolve(pretrained: str, experts: str, allow_pickle: bool) -> tuple[ResolvedModel, list[ResolvedModel]]:
        """Resolve sources once per machine: the local main process downloads, the others reuse its cache."""
        from accelerate import PartialState

        state = PartialState()
        with state.local_main_process_first():
            return resolve_merge_inputs(
                ExpertSpec.parse(str(pretrained)), [ExpertSpec.parse(s) for s in _split_list(experts)],
                allow_pickle=allow_pickle,
            )

    def _build_backend(self, name: str, kwargs: dict[str, Any]) -> lmms:
        backend = load_backend(name, str(self.base.path), kwargs, want_simple=type(self).is_simple)
        # A chat-mode proxy over a simple-only backend (qwen2_vl) must be fed simple requests.
        self.is_simple = bool(getattr(type(backend), "is_simple", True))
        return backend

    def _module(self):
        module = getattr(self.backend, "model", None) or getattr(self.backend, "_model", None)
        if hasattr(module, "module") and not hasattr(module, "config"):
            module = module.module  # DDP wrapper
        if module is None or not hasattr(module, "named_parameters"):
            raise ConfigError(f"backend {self.backend_name!r} exposes no transformers model to merge into")
        return module

    # ------------------------------------------------------------------ merging

    def remerge(self, weights: Mixture | Mapping[str, float] | str) -> Mixture:
        """Merge to new weights in place (from the untouched base, no reload)."""
        return self.merger.merge(weights, self.method)

    @property
    def mixture(self) -> Mixture:
        assert self.merger.mixture is not None
        return self.merger.mixture

    def identity(self) -> str:
        """What makes two instances answer alike: pinned sources (a local folder also by its files'
        sizes and times: an expert re-trained into the same output_dir is another model), weights,
        method, backend and its arguments (max_pixels, system_prompt, ...), prompts."""
        experts = ";".join(f"{e.name}={_named(e)}" for e in self.experts)
        template = f",chat_template={self.chat_template.fingerprint}" if self.chat_template is not None else ""
        args = ",".join(f"{k}={self.backend_kwargs[k]}" for k in sorted(self.backend_kwargs))
        return (
            f"merge_proxy(base={_named(self.base)},experts={experts},weights={self.mixture.key()},"
            f"method={self.method.name},scale={self.method.scale:g},backend={self.backend_name}{template},"
            f"backend_args=({args}))"
        )

    # lmms-eval's response cache fingerprints a model instance by str(); the default repr holds a
    # memory address (never a cache hit) and says nothing of the weights (wrong hits). Pin both.
    __repr__ = identity
    __str__ = identity

    # ------------------------------------------------------------------ delegation

    @staticmethod
    def _isolate(requests: list[Instance]) -> list[Instance]:
        """Copies whose gen_kwargs the backend may edit (qwen2_vl pops ``until``) without touching ours."""
        isolated = []
        for req in requests:
            clone = copy.copy(req)
            args = req.arguments
            if isinstance(args, tuple):
                clone.arguments = tuple(copy.deepcopy(a) if isinstance(a, dict) else a for a in args)
            elif isinstance(args, dict):
                clone.arguments = copy.deepcopy(args)
            isolated.append(clone)
        return isolated

    def generate_until(self, requests: list[Instance]):
        return self.backend.generate_until(self._isolate(requests))

    def loglikelihood(self, requests: list[Instance]):
        return self.backend.loglikelihood(self._isolate(requests))

    def generate_until_multi_round(self, requests: list[Instance]):
        return self.backend.generate_until_multi_round(self._isolate(requests))

    def clean(self) -> None:
        """Keep the merged model: lmms-eval's clean() deletes every module attribute after a run."""
        import gc

        gc.collect()

    @property
    def task_dict(self) -> dict:
        return self.__dict__.setdefault("_task_dict", {})

    @task_dict.setter
    def task_dict(self, value: dict) -> None:
        # The evaluator fills lm.task_dict; the backend reads its own: keep them one dict.
        self.__dict__["_task_dict"] = value
        if "backend" in self.__dict__:
            self.backend.task_dict = value

    def set_cache_hook(self, cache_hook) -> None:
        super().set_cache_hook(cache_hook)
        self.backend.set_cache_hook(cache_hook)

    @property
    def rank(self) -> int:
        return self.backend.rank

    @property
    def world_size(self) -> int:
        return self.backend.world_size

    def __getattr__(self, name: str):
        # Attributes tasks or the evaluator read from the backend (tokenizer, device, batch_size...).
        if name in ("backend", "merger", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.backend, name)


def _named(model: ResolvedModel) -> str:
    """A Hub model's ``repo@sha``; a local one's path and the digest of its weight files."""
    return model.fingerprint if model.repo_id else f"{model.pinned_source}#{model.fingerprint}"


def default_backend(model: ResolvedModel) -> str:
    """The lmms-eval wrapper for the model's architecture (``config.architectures[0]``)."""
    import json

    cfg = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in DEFAULT_BACKENDS:
        raise ConfigError(
            f"no default lmms-eval backend for architecture {arch!r}; pass backend=NAME "
            f"(one of lmms-eval's transformers wrappers, e.g. {', '.join(sorted(set(DEFAULT_BACKENDS.values())))})"
        )
    return DEFAULT_BACKENDS[arch]


def _cut_at_commas(kwargs: Mapping[str, Any], accepted: set[str]) -> list[str]:
    """Keys lmms-eval made of what followed a comma inside ``experts=`` or ``weights=`` (it splits
    model_args at every comma): a source or a number right after them, in the order given, that is
    none of the backend's parameters (``accepted``) nor what lmms-eval adds (batch_size, device)."""
    stray: list[str] = []
    after = None
    for key, value in kwargs.items():
        if key in ("experts", "weights"):
            after = key
        elif key in OWN_ARGS or key in accepted or key in _LMMS_EVAL_ADDS:
            after = None
        elif after and ("/" in str(value) or _is_number(value)):  # a key given twice keeps its first place
            stray.append(key)
        else:
            after = None
    return stray


#: What lmms-eval's CLI adds to every model's arguments.
_LMMS_EVAL_ADDS = ("batch_size", "max_batch_size", "device")


def _backend_parameters(name: str) -> set[str]:
    """The keyword parameters backend ``name`` declares (none when it cannot be told)."""
    import inspect

    from lmms_eval import models

    try:
        return set(inspect.signature(models.get_model(name).__init__).parameters) - {"self", "kwargs"}
    except Exception:  # noqa: BLE001 - an unknown backend: named by load_backend
        return set()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def backend_manifest(name: str) -> Any:
    """lmms-eval's manifest of backend ``name``; an unknown name is refused with the closest ones."""
    import difflib

    from lmms_eval import models

    try:
        return models.get_model_manifest(name)
    except ValueError:
        close = difflib.get_close_matches(name, models.list_available_models(include_aliases=True), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"backend {name!r} is not an lmms-eval model; {hint}`lmms-eval models` lists them") from None


def load_backend(name: str, pretrained: str, kwargs: Mapping[str, Any], *, want_simple: bool) -> lmms:
    """lmms-eval's wrapper ``name`` loading ``pretrained``: the simple implementation when ``want_simple``
    (or when there is no chat one), else the chat one; arguments it refuses are named. One place for the
    proxy's backend and a sweep's full truth checkpoints, so both are evaluated alike."""
    from lmms_eval import models

    manifest = backend_manifest(name)
    if want_simple and manifest.simple_class_path is None:
        raise ConfigError(f"backend {name!r} has no simple implementation; drop --force_simple")
    cls = models.get_model(name, force_simple=want_simple or manifest.chat_class_path is None)
    try:
        return cls(pretrained=pretrained, **kwargs)
    except (TypeError, AssertionError) as err:
        raise ConfigError(
            f"backend {name!r} refused its arguments ({err}); merge_proxy passes it every model_arg "
            f"except {', '.join(OWN_ARGS)}"
        ) from err


class MergeProxyChat(MergeProxy):
    """Chat-mode merged proxy: lmms-eval prefers the chat slot; simple-only backends still work."""

    is_simple = False


def proxy_class(backend: str | None) -> type[MergeProxy]:
    """The proxy class for a backend: simple where lmms-eval has a simple implementation of it,
    chat where it has only a chat one (internvl_hf). ``None`` gets the simple class (the sweep
    names the backend, the recipe's or the base architecture's default, so it never passes None)."""
    if not backend:
        return MergeProxy
    from lmms_eval import models

    try:
        manifest = models.get_model_manifest(backend)
    except ValueError:
        return MergeProxy  # load_backend names the unknown backend with the fix
    return MergeProxy if manifest.simple_class_path is not None else MergeProxyChat
