"""The sweep journal: one JSON line per (mixture x benchmark), appended atomically, read tolerantly.

A sweep can be killed at any moment (SLURM pre-emption, Ctrl-C). Each record is written with a single
``write`` of one complete line to a file opened in append mode and fsync'ed, so a record is either
wholly there or not at all; a torn last line (a crash inside the write) is ignored when reading and
redone by the next run. A rerun skips every (mixture, benchmark) the journal holds for its mode.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA = "merge-proxy/journal"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class JournalRecord:
    """One scored (mixture, benchmark) pair, for a merged proxy (``proxy``) or a trained model (``truth``)."""

    mode: str
    mixture_id: str
    weights: dict[str, float]
    benchmark: str
    score: float
    """The benchmark's primary metric (the one ranked on)."""
    metrics: dict[str, float] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    experts: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    """For ``truth``: the pinned source of the checkpoint trained on this mixture."""
    model_fingerprint: str | None = None
    """For ``truth`` from a local folder: its weight files' digest (:attr:`ResolvedModel.fingerprint`),
    so a rerun tells a model re-trained into the same folder from the one scored."""
    lmms_eval_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    """What else decides the score (limit, metric, method, scale, backend and its arguments): a rerun
    with other settings must not count these records as done."""
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.mode, self.mixture_id, self.benchmark)

    def to_json(self) -> str:
        # vars, not dataclasses.asdict: the same JSON without deep-copying every nested dict (a report
        # digests every record; asdict took three quarters of a 20,000-mixture report's time). Fields
        # added later are written only when set: a record, and so a report's digest of its journal,
        # reads the same as before them.
        data = vars(self)
        if any(data[k] is None for k in _LATER_FIELDS):
            data = {k: v for k, v in data.items() if not (k in _LATER_FIELDS and v is None)}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Fields added after the schema's first version, left out of a record's JSON while unset.
_LATER_FIELDS = ("model_fingerprint",)

#: Fields nearly every record of a journal repeats: shared between the records of one read.
_SHARED_FIELDS = ("base", "experts", "settings")

#: The fields a record cannot be read without.
_REQUIRED = tuple(f.name for f in fields(JournalRecord) if f.default is MISSING and f.default_factory is MISSING)

#: A sweep directory's journal, and the folder where its SLURM shards journal the same records.
JOURNAL_FILE = "journal.jsonl"
SHARD_DIR = "shards"


def shard_journals(sweep_dir: Path) -> list[Path]:
    """A sweep directory's shard journals, in name order (the order gathering folds them in)."""
    return sorted((sweep_dir / SHARD_DIR).glob("*.jsonl"))


def shards_of(journal: Path) -> list[Path]:
    """The shard journals beside a sweep's journal.jsonl (none for a journal file named otherwise)."""
    return shard_journals(journal.parent) if journal.name == JOURNAL_FILE else []


def read_with_shards(journal: Path) -> tuple[list[JournalRecord], list[JournalRecord]]:
    """A sweep's journal records, and those only in its shard journals (SLURM jobs not gathered yet;
    one per key, the main journal's first, see :meth:`Held.add_new`)."""
    records = Journal(journal).records()
    held = Held(records)
    fresh: list[JournalRecord] = []
    for shard in shards_of(journal):
        fresh += held.add_new(Journal(shard).records())
    return records, fresh


def scored(records: Iterable[JournalRecord], mode: str) -> set[tuple[str, str]]:
    """(mixture_id, benchmark) scored in ``mode``: what a rerun skips. A non-finite score is not
    done (the rerun retries it), so a sweep never reports as finished what the report leaves out."""
    return {(r.mixture_id, r.benchmark) for r in records if r.mode == mode and math.isfinite(r.score)}


def records_digest(records: Iterable[JournalRecord]) -> str:
    """Which records, whatever file, path or order holds them: a report and a later push of the same
    scores agree after the sweep directory was moved or copied, or its shards gathered."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(r.to_json() for r in records)).encode("utf-8")).hexdigest()


class Held:
    """The keys some records hold, and those with a finite score: folding S shard journals into one
    is then one pass over the records, not S passes over everything held (1,024 shards of a 140,000
    record sweep took two minutes)."""

    def __init__(self, records: Iterable[JournalRecord] = ()) -> None:
        self.seen: set[tuple[str, str, str]] = set()
        self.finite: set[tuple[str, str, str]] = set()
        for r in records:
            self.seen.add(r.key)
            if math.isfinite(r.score):
                self.finite.add(r.key)

    def add_new(self, incoming: Iterable[JournalRecord]) -> list[JournalRecord]:
        """The incoming records worth adding, now held too: any record of a key never seen, and a finite
        score for a key that has none (a shard's retry of a non-finite score). Appended after the held
        ones, they win where readers keep a key's last record; a finite score is never shadowed by a NaN."""
        out = []
        for r in incoming:
            good = math.isfinite(r.score)
            if r.key not in self.seen or (good and r.key not in self.finite):
                out.append(r)
                self.seen.add(r.key)
                if good:
                    self.finite.add(r.key)
        return out


class Journal:
    """Append-only JSONL file of :class:`JournalRecord`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[JournalRecord]:
        # Millions of small dicts, none of them garbage: the cyclic collector would only rescan them
        # (it doubled the read time of a 140,000-record journal).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return list(self._iter())
        finally:
            if enabled:
                gc.enable()

    def _iter(self) -> Iterator[JournalRecord]:
        """The records, in file order. Equal provenance (base, experts, settings: the same in nearly
        every record) is one shared object per read, read-only: a million records of a large sweep
        then take a third of the memory (6.7 -> 2 KiB each)."""
        if not self.path.is_file():
            return
        shared: dict[str, Any] = {}
        with self.path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.endswith("\n"):
                    logger.warning("%s:%d: ignoring an incomplete last line (interrupted write)", self.path, number)
                    return
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d: ignoring a line that is not JSON", self.path, number)
                    continue
                if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                    continue
                for key in _SHARED_FIELDS:  # equal to the previous record's (nearly always): that object
                    value = data.get(key)
                    if value and value == shared.get(key):
                        data[key] = shared[key]
                    elif value:
                        shared[key] = value
                try:
                    record = JournalRecord.from_dict(data)
                except TypeError:  # a hand-edited or foreign line without the required fields
                    logger.warning("%s:%d: ignoring a record without %s", self.path, number,
                                   ", ".join(f for f in _REQUIRED if f not in data) or "its required fields")
                    continue
                yield record

    def append(self, record: JournalRecord) -> None:
        self.append_many([record])

    def append_many(self, records: Iterable[JournalRecord]) -> None:
        """Append complete lines in one write; repair a torn last line first so records never fuse."""
        payload = "".join(r.to_json() + "\n" for r in records)
        if not payload:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, payload.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_torn_tail(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)
            logger.warning("%s: dropped an incomplete last line left by an interrupted write", self.path)
