"""On-disk storage: repo records, immutable commits, branch and tag refs, content-addressed blobs.

Layout under the data directory (everything the emulator knows lives here, so a new server on the
same directory serves the same repos, commits and ids)::

    emulator.json                                   format marker
    emulator.lock                                   held (flock) by the one server using the folder
    blobs/<sha256[:2]>/<sha256>                     file contents, shared by all repos
    repos/<type>s/<namespace>/<name>/repo.json      RepoRecord
    repos/<type>s/<namespace>/<name>/commits/<id>.json   Commit manifest: the full file list
    repos/<type>s/<namespace>/<name>/refs/heads/<branch> commit id (also refs/tags/<tag>)
    tmp/                                            staging area, same filesystem as blobs/

A commit is atomic because of the write order: blobs first, then the immutable manifest, then the
ref, replaced with ``os.replace``. A reader sees the old head or the new one, never a half commit,
and a crash leaves only unreferenced files behind. Every mutation runs under one lock: the emulator
is a test fixture, so simplicity beats write concurrency. Manifests carry the whole file list rather
than git trees so that reads need one JSON file, and they store the card data parsed at commit time
so that listing repos never re-reads READMEs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, the one-server-per-directory rule is not enforced
    fcntl = None  # type: ignore[assignment]

from merge_proxy.errors import ConfigError
from merge_proxy.testing.hub.cards import InvalidCard, derive_tags, parse_card
from merge_proxy.testing.hub.errors import BadRequest, Conflict, PreconditionFailed, RevisionNotFound
from merge_proxy.testing.hub.records import (
    DEFAULT_BRANCH,
    README,
    AddFile,
    Commit,
    FileEntry,
    Operation,
    RepoRecord,
    StagedBlob,
    apply_operations,
    git_blob_oid,
    is_commit_id,
    utc_now,
    validate_repo_id,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# No '/' in ref names: revisions travel as one URL path segment and the server sees them decoded.
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

#: What the Hub commits as "initial commit" when a repo is created.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
        "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors "
        "saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)


def _validate_ref_name(name: str) -> str:
    if not _REF_NAME.match(name) or is_commit_id(name):
        raise BadRequest(
            f"Invalid branch or tag name '{name}': use letters, digits, '.', '_' or '-' "
            "(the emulator does not support '/' in ref names)."
        )
    return name


@lru_cache(maxsize=4096)
def _load_commit(path: str) -> Commit:
    """Commits never change once written, so they are parsed once per process."""
    return Commit.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def _write_json_atomic(path: Path, data: Any, tmp_dir: Path) -> None:
    _write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode(), tmp_dir)


def _write_bytes_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Readers never see a partial file: write aside, flush, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class HubStore:
    """All repos of one emulator, persisted under ``root``; safe to share between request threads."""

    def __init__(self, root: Path, *, initial_commit: bool = True) -> None:
        self.root = Path(root)
        self.initial_commit = initial_commit
        self._lock = threading.RLock()
        self._tmp = self.root / "tmp"
        for folder in (self._tmp, self.root / "blobs", self.root / "repos"):
            folder.mkdir(parents=True, exist_ok=True)
        self._owner = self._claim_directory()
        try:
            self._open_layout()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let another store open this directory."""
        self._owner.close()

    def _claim_directory(self) -> IO[str]:
        """Hold an exclusive lock on the directory: two servers would wipe each other's staged uploads."""
        owner = open(self.root / "emulator.lock", "a")  # noqa: SIM115 - kept open until close()
        if fcntl is not None:
            try:
                fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner.close()
                raise ConfigError(
                    f"another Hub emulator is already serving {self.root}; "
                    "stop it or use another data directory"
                ) from err
        return owner

    def _open_layout(self) -> None:
        marker = self.root / "emulator.json"
        if marker.exists():
            found = json.loads(marker.read_text(encoding="utf-8")).get("format")
            if found != FORMAT_VERSION:
                raise ConfigError(
                    f"{self.root} holds Hub emulator data in format {found}, but this version reads format "
                    f"{FORMAT_VERSION}; use a fresh data directory"
                )
        else:
            _write_json_atomic(marker, {"format": FORMAT_VERSION}, self._tmp)
        for leftover in self._tmp.iterdir():  # staging files of a server that stopped mid-request
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    # -- repos -----------------------------------------------------------------------------------

    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def get_repo(self, repo_type: str, repo_id: str) -> RepoRecord | None:
        """The repo's record, or None when it does not exist (or the id is malformed)."""
        try:
            validate_repo_id(repo_type, repo_id)
            data = json.loads((self._repo_dir(repo_type, repo_id) / "repo.json").read_text(encoding="utf-8"))
        except (BadRequest, FileNotFoundError, NotADirectoryError):
            return None
        return RepoRecord.from_json(data)

    def list_repos(self, repo_type: str) -> Iterator[RepoRecord]:
        """Every repo of a type, in no particular order."""
        for record_path in (self.root / "repos" / f"{repo_type}s").glob("*/*/repo.json"):
            try:
                yield RepoRecord.from_json(json.loads(record_path.read_text(encoding="utf-8")))
            except FileNotFoundError:  # deleted while listing
                continue

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> RepoRecord:
        """Create an empty repo (with the Hub's initial commit); Conflict if it exists."""
        validate_repo_id(repo_type, repo_id)
        with self._lock:
            if self.get_repo(repo_type, repo_id) is not None:
                raise Conflict(f"You already created this {repo_type} repo: {repo_id}")
            record = RepoRecord(
                repo_type=repo_type,
                repo_id=repo_id,
                private=private,
                created_at=utc_now(),
                object_id=secrets.token_hex(12),
            )
            repo_dir = self._repo_dir(repo_type, repo_id)
            for sub in ("commits", "refs/heads", "refs/tags"):
                (repo_dir / sub).mkdir(parents=True, exist_ok=True)
            _write_json_atomic(repo_dir / "repo.json", record.to_json(), self._tmp)
            if self.initial_commit:
                blob = self.stage_bytes(DEFAULT_GITATTRIBUTES.encode())
                self.commit(
                    record,
                    DEFAULT_BRANCH,
                    [AddFile(".gitattributes", blob)],
                    title="initial commit",
                    message="",
                    author=author,
                )
            logger.info("created %s repo %s (private=%s)", repo_type, repo_id, private)
            return record

    def delete_repo(self, record: RepoRecord) -> None:
        """Remove a repo and its history; blobs stay, since other repos may share them."""
        with self._lock:
            repo_dir = self._repo_dir(record.repo_type, record.repo_id)
            trash = self._tmp / f"deleted-{uuid.uuid4().hex}"
            os.replace(repo_dir, trash)  # atomic: readers see the repo or nothing
            shutil.rmtree(trash, ignore_errors=True)
            logger.info("deleted %s repo %s", record.repo_type, record.repo_id)

    def set_private(self, record: RepoRecord, private: bool) -> RepoRecord:
        """Change a repo's visibility."""
        with self._lock:
            updated = dataclasses.replace(record, private=private)
            repo_dir = self._repo_dir(record.repo_type, record.repo_id)
            _write_json_atomic(repo_dir / "repo.json", updated.to_json(), self._tmp)
            return updated

    # -- refs and commits ------------------------------------------------------------------------

    def _ref_path(self, record: RepoRecord, kind: str, name: str) -> Path:
        return self._repo_dir(record.repo_type, record.repo_id) / "refs" / kind / name

    def _read_ref(self, record: RepoRecord, kind: str, name: str) -> str | None:
        if not _REF_NAME.match(name):
            return None
        try:
            return self._ref_path(record, kind, name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

    def refs(self, record: RepoRecord, kind: str) -> dict[str, str]:
        """Branch (``kind="heads"``) or tag (``kind="tags"``) names mapped to commit ids."""
        folder = self._repo_dir(record.repo_type, record.repo_id) / "refs" / kind
        return {path.name: path.read_text(encoding="utf-8").strip() for path in sorted(folder.glob("*"))}

    def get_commit(self, record: RepoRecord, commit_id: str) -> Commit | None:
        """A commit of this repo by full id, or None."""
        if not is_commit_id(commit_id):
            return None
        path = self._repo_dir(record.repo_type, record.repo_id) / "commits" / f"{commit_id}.json"
        try:
            return _load_commit(str(path))
        except FileNotFoundError:
            return None

    def branch_head(self, record: RepoRecord, branch: str) -> Commit | None:
        """The commit a branch points to; None when the branch does not exist."""
        commit_id = self._read_ref(record, "heads", branch)
        return self.get_commit(record, commit_id) if commit_id else None

    def resolve(self, record: RepoRecord, revision: str) -> Commit:
        """A branch, tag or full commit id of this repo, as a commit; RevisionNotFound otherwise."""
        commit_id = self._read_ref(record, "heads", revision) or self._read_ref(record, "tags", revision)
        commit = self.get_commit(record, commit_id or revision)
        if commit is None:
            raise RevisionNotFound(f"Invalid rev id: {revision}")
        return commit

    def history(self, record: RepoRecord, commit: Commit) -> list[Commit]:
        """The commit and its first-parent ancestors, newest first (what ``list_repo_commits`` shows)."""
        chain = [commit]
        while chain[-1].parents:
            parent = self.get_commit(record, chain[-1].parents[0])
            if parent is None:
                break
            chain.append(parent)
        return chain

    def create_ref(self, record: RepoRecord, kind: str, name: str, commit: Commit) -> None:
        """Create a branch or tag at ``commit``; Conflict when it already exists."""
        _validate_ref_name(name)
        with self._lock:
            if self._read_ref(record, kind, name) is not None:
                what = "Branch" if kind == "heads" else "Tag"
                raise Conflict(f"{what} '{name}' already exists in {record.repo_id}")
            _write_bytes_atomic(self._ref_path(record, kind, name), commit.id.encode(), self._tmp)

    def delete_ref(self, record: RepoRecord, kind: str, name: str) -> None:
        """Delete a branch or tag; the default branch cannot be deleted, as on the Hub."""
        with self._lock:
            if kind == "heads" and name == DEFAULT_BRANCH:
                raise BadRequest(f"Cannot delete the default branch '{DEFAULT_BRANCH}'.")
            if self._read_ref(record, kind, name) is None:
                raise RevisionNotFound(f"Invalid rev id: {name}")
            self._ref_path(record, kind, name).unlink()

    # -- blobs -----------------------------------------------------------------------------------

    def blob_path(self, entry: FileEntry) -> Path:
        """Where the bytes of a committed file are stored."""
        return self.root / "blobs" / entry.sha256[:2] / entry.sha256

    def stage_bytes(self, data: bytes) -> StagedBlob:
        """Park uploaded bytes until a commit lands them; the caller discards them if it never does."""
        tmp_path = self._tmp / f"{uuid.uuid4().hex}.blob"
        tmp_path.write_bytes(data)
        return StagedBlob(
            tmp_path=tmp_path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), oid=git_blob_oid(data)
        )

    def _land_blob(self, blob: StagedBlob) -> None:
        target = self.root / "blobs" / blob.sha256[:2] / blob.sha256
        if target.exists():
            blob.tmp_path.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(blob.tmp_path, target)
        blob.landed = True

    # -- commits ---------------------------------------------------------------------------------

    def commit(
        self,
        record: RepoRecord,
        branch: str,
        operations: Sequence[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply ``operations`` on top of ``branch`` as one commit: everything lands or nothing does.

        Every check (paths, deletions, file/folder clashes, README metadata, ``parent_commit``)
        runs before the first byte is moved into the store. Staged blobs are always consumed.
        """
        try:
            with self._lock:
                head = self._commit_base(record, branch, parent_commit)
                files = apply_operations(dict(head.files) if head else {}, operations)
                card_data = self._card_for(record, files, head, operations)
                tags = tuple(derive_tags(card_data, record.repo_type, files))
                kept = {entry.sha256 for entry in files.values()}
                for operation in operations:
                    if isinstance(operation, AddFile) and operation.blob.sha256 in kept:
                        self._land_blob(operation.blob)
                commit = self._new_commit(head, files, title, message, author, card_data, tags)
                repo_dir = self._repo_dir(record.repo_type, record.repo_id)
                _write_json_atomic(repo_dir / "commits" / f"{commit.id}.json", commit.to_json(), self._tmp)
                _write_bytes_atomic(self._ref_path(record, "heads", branch), commit.id.encode(), self._tmp)
                logger.debug("commit %s on %s@%s: %s", commit.id, record.repo_id, branch, title)
                return commit
        finally:
            for operation in operations:
                if isinstance(operation, AddFile):
                    operation.blob.discard()

    def commit_target(self, record: RepoRecord, branch: str) -> Commit | None:
        """The head a commit on ``branch`` builds on; None only for the first commit of an empty repo.

        Commits go to existing branches; a repo without any commit accepts its first one on main.
        """
        head = self.branch_head(record, branch)
        if head is None and (branch != DEFAULT_BRANCH or self.refs(record, "heads")):
            raise RevisionNotFound(f"Invalid rev id: {branch} (commits can only target an existing branch)")
        return head

    def _commit_base(self, record: RepoRecord, branch: str, parent_commit: str | None) -> Commit | None:
        head = self.commit_target(record, branch)
        if parent_commit is not None and (head is None or head.id != parent_commit):
            raise PreconditionFailed(
                f"A commit has happened since {parent_commit} on branch '{branch}'. "
                "Please refresh and try again."
            )
        return head

    def _card_for(
        self,
        record: RepoRecord,
        files: Mapping[str, FileEntry],
        head: Commit | None,
        operations: Sequence[Operation],
    ) -> dict[str, Any] | None:
        """The README metadata after the commit; parsed only when the README changed."""
        readme = files.get(README)
        if readme is None:
            return None
        if head is not None and head.files.get(README) == readme:
            return head.card_data
        staged = [op.blob for op in operations if isinstance(op, AddFile) and op.path == README]
        source = staged[-1].tmp_path if staged else self.blob_path(readme)
        try:
            text = source.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidCard("Invalid README.md: it is not valid UTF-8 text.") from err
        return parse_card(text, record.repo_type)

    def _new_commit(
        self,
        head: Commit | None,
        files: Mapping[str, FileEntry],
        title: str,
        message: str,
        author: str,
        card_data: dict[str, Any] | None,
        tags: tuple[str, ...],
    ) -> Commit:
        parents = (head.id,) if head else ()
        date = utc_now()
        identity = {
            "parents": parents,
            "files": {path: entry.sha256 for path, entry in sorted(files.items())},
            "title": title,
            "message": message,
            "author": author,
            "date": date,
            "nonce": uuid.uuid4().hex,  # two identical commits in the same millisecond stay distinct
        }
        commit_id = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return Commit(
            id=commit_id,
            parents=parents,
            title=title,
            message=message,
            author=author,
            date=date,
            files=dict(files),
            card_data=card_data,
            tags=tags,
        )
