"""What a rerun may resume: the journal's records against the recipe about to score more.

A sweep skips every (mixture, benchmark) its journal holds, so the journal must hold scores of the
same experiment: the same settings (limit, metric, method, backend, chat template, ...) and the same
models (base and experts, by Hub commit or by a local folder's weight files; truth models per
mixture). Anything else would be counted as done and ranked with the new scores; these checks refuse
it, naming what changed and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge_proxy.errors import ConfigError
from merge_proxy.journal import JournalRecord
from merge_proxy.recipe import Benchmark, Recipe


def settings(recipe: Recipe, benchmark: Benchmark) -> dict[str, Any]:
    """Everything besides the mixture that decides a score, as the journal stores it (JSON types)."""
    import json

    found = {
        "limit": benchmark.limit, "metric": list(benchmark.metric_names) or None, "method": recipe.method,
        "scale": recipe.scale, "backend": recipe.backend, "backend_args": recipe.backend_args,
        "max_score": benchmark.max_score, "chat_template_from": recipe.chat_template_from,
        "postprocess": POSTPROCESS,
    }
    if found["metric"] and len(found["metric"]) == 1:
        found["metric"] = found["metric"][0]
    # Settings added later are stored only when used, so journals written before them still resume.
    return json.loads(json.dumps({k: v for k, v in found.items() if v is not None or k in _ALWAYS}, sort_keys=True))


#: Settings every journal record has held from the start (None included), and ``postprocess``, held
#: since answers are post-processed as on lmms-eval's command line: a journal scored before then
#: (images kept, reasoning blocks not stripped) is not resumed into.
_ALWAYS = ("limit", "metric", "method", "scale", "backend", "backend_args", "postprocess")
#: How lmms-eval post-processes answers in a sweep: with its command line's defaults (see
#: :meth:`merge_proxy.sweep.Evaluator._cli_args`).
POSTPROCESS = "lmms-eval-cli"


def check_settings(recipe: Recipe, records: Sequence[JournalRecord]) -> None:
    """Refuse to resume into a journal scored with other settings (a ``limit: 5`` smoke run, another
    scale): counting those records as done would mix two experiments in one ranking."""
    wanted = {b.task: settings(recipe, b) for b in recipe.benchmarks}
    for record in records:
        expected = wanted.get(record.benchmark)
        if record.mode != recipe.mode or expected is None or not record.settings:
            continue
        keys = sorted(set(expected) | set(record.settings))
        changed = ", ".join(f"{k}: {record.settings.get(k)!r} -> {expected.get(k)!r}"
                            for k in keys if record.settings.get(k) != expected.get(k))
        if not changed:
            continue
        raise ConfigError(
            f"{recipe.output_dir} holds {record.benchmark} scores made with other settings ({changed}); resuming would "
            "mix two experiments: pass a new --out (or output_dir), or move the old journal away"
        )


@dataclass(frozen=True)
class ModelId:
    """A model as a journal names it, compared with what a rerun would score.

    ``repo`` is a Hub repo id (its revision aside) or :data:`LOCAL`; ``detail`` what tells two versions
    apart, when known: the commit (``repo@sha``) of a Hub model, the weight files' digest of a local one
    (:func:`merge_proxy.experts.local_fingerprint`: a moved folder is the same model, one re-trained in
    place is not). Unknown details (an unpinned revision, a journal older than the field) match.
    """

    repo: str
    detail: str | None
    shown: str

    @classmethod
    def from_source(cls, source: str, files: bool = True) -> ModelId:
        """From a recipe's or a submitter's source text (``ORG/NAME[@REV]`` or a directory); ``files``
        False leaves a local folder's weight files out (what the other side has no digest of)."""
        from merge_proxy.experts import local_fingerprint

        path = Path(source).expanduser()
        if path.is_dir():
            return cls(LOCAL, local_fingerprint(path) if files else None, str(path.resolve()))
        if source.startswith(("/", "~", ".")):  # a folder that is not there (any more)
            return cls(LOCAL, None, source)
        repo = _without_revision(source)
        pinned = source if "@" in source and len(source.rsplit("@", 1)[1]) == 40 else None
        return cls(repo, pinned, source)

    @classmethod
    def from_record(cls, entry: Mapping[str, Any]) -> ModelId | None:
        """From a journal record's base or expert entry (None when it names no source)."""
        source = entry.get("source")
        if not source:
            return None
        if entry.get("revision") or not (source.startswith(("/", "~", ".")) or Path(source).expanduser().exists()):
            return cls(_without_revision(source), entry.get("pinned"), entry.get("pinned") or source)
        return cls(LOCAL, entry.get("fingerprint"), entry.get("pinned") or source)

    def same(self, other: ModelId) -> bool:
        if self.repo != other.repo:
            return False
        if self.detail and other.detail:
            return self.detail == other.detail
        if self.repo == LOCAL:  # a journal older than fingerprints: its folder, where it still is
            return not (Path(self.shown).exists() and Path(other.shown).exists()) or _same_path(self.shown, other.shown)
        return True

    def same_place(self, other: ModelId) -> bool:
        """The same repo or folder (if not the same version)."""
        return self.repo == other.repo and (self.repo != LOCAL or _same_path(self.shown, other.shown))


#: :attr:`ModelId.repo` of a local directory.
LOCAL = "(a local directory)"


def check_models(records: Sequence[JournalRecord], base: ModelId, experts: Mapping[str, ModelId], where: Path) -> None:
    """Refuse to resume into a journal whose proxies merged other models: another base, another expert
    under a name or the experts in another order (recipe B run into recipe A's directory), a
    re-published expert's new commit, a local expert re-trained in place. Their scores would be
    counted as done and ranked with the new ones. Checked from the recipe before anything runs, and
    again once the sources are pinned or resolved (then every commit is known)."""
    now = {"base": base, **experts}
    seen: set[str] = set()
    for record in records:
        if record.mode != "proxy" or not record.experts:
            continue
        signature = repr((record.base, record.experts))
        if signature in seen:
            continue
        seen.add(signature)
        order = [e.get("name") for e in record.experts]
        if order != list(experts) and sorted(map(str, order)) == sorted(experts):
            raise ConfigError(
                f"{where} holds proxy scores of the experts in the order {', '.join(map(str, order))}, the recipe "
                f"lists {', '.join(experts)}: mixture ids follow that order, so list the experts as the journal does"
            )
        was = {"base": ModelId.from_record(record.base), **{e.get("name"): ModelId.from_record(e) for e in record.experts}}
        differ = []
        for k in ("base", *sorted((set(was) | set(now)) - {"base"}, key=str)):
            if k in was and was[k] is None:  # an entry without a source (written before the field): not judged
                continue
            if k not in was or k not in now or not was[k].same(now[k]):
                differ.append(k)
        if not differ:
            continue
        changed = "; ".join(f"{k}: {was[k].shown if was.get(k) else 'none'} -> {now[k].shown if k in now else 'none'}"
                            for k in differ)
        why = ""
        updated = [k for k in differ if was.get(k) and k in now and was[k].same_place(now[k])]
        if any(now[k].repo == LOCAL for k in updated):
            why += "; a local folder's weight files changed since: re-trained, or copied anew"
        if any(now[k].repo != LOCAL for k in updated):
            why += ("; a new commit: to keep scoring the journal's, pin it in the recipe: "
                    + ", ".join(f"{k}: {was[k].detail}" for k in updated if now[k].repo != LOCAL))
        raise ConfigError(
            f"{where} holds proxy scores merged from other models ({changed}{why}); resuming would rank two "
            "sets of experts together: pass a new --out (or output_dir), or move the old journal away"
        )


def truth_model_id(record: JournalRecord) -> ModelId:
    """The trained model a truth record scored: its pinned source, and a local folder's digest then
    (absent from journals written before the field: judged by the folder)."""
    have = ModelId.from_source(record.model or "", files=False)
    if have.repo == LOCAL and record.model_fingerprint:
        have = ModelId(LOCAL, record.model_fingerprint, have.shown)
    return have


def check_truth_models(records: Sequence[JournalRecord], models: Mapping[str, ModelId], where: Path) -> None:
    """Refuse to resume a truth journal whose mixtures were scored on other trained models (``models``:
    mixture id -> the model the recipe trains it as, :meth:`ModelId.from_source`): another repo or
    folder, a re-published model's new commit, a model re-trained into the same folder."""
    for record in records:
        if record.mode != "truth" or not record.model or record.mixture_id not in models:
            continue
        have, now = truth_model_id(record), models[record.mixture_id]
        if have.same(now):
            continue
        why = ""
        if have.same_place(now):
            why = ("; its weight files changed since: re-trained, or copied anew" if now.repo == LOCAL else
                   f"; a new commit: to keep scoring the journal's, pin it in the recipe: model: {have.detail}")
        raise ConfigError(
            f"{where} holds truth scores of {record.mixture_id} from {have.shown}, the recipe trains it as "
            f"{now.shown}{why}: pass a new --out (or output_dir), or move the old journal away"
        )


def _same_path(a: str | None, b: str | None) -> bool:
    return bool(a and b) and Path(a).expanduser().exists() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _without_revision(source: str | None) -> str | None:
    """``ORG/NAME[/SUB]`` of ``ORG/NAME[/SUB][@REV]``; a local directory as it is (its name may hold ``=`` or ``@``)."""
    from merge_proxy.hub import split_revision

    if not source or Path(source).expanduser().exists():
        return source
    return split_revision(source)[0]
