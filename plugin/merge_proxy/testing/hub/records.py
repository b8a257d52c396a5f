"""The emulator's data model: repos, commits, files and commit operations, with their validation.

Plain dataclasses with no storage or HTTP concerns, so the rules a commit must follow (safe paths,
no file/folder clashes, deletions of existing entries only) can be checked before anything is
written. Files carry two ids: ``sha256`` addresses the bytes in the blob store, ``oid`` (the git
blob id) is what the Hub reports as ETag and tree ``oid``, and what the client compares to skip
unchanged uploads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from merge_proxy.testing.hub.errors import BadRequest, EntryNotFound

REPO_TYPES: tuple[str, ...] = ("model", "dataset")
DEFAULT_BRANCH = "main"
README = "README.md"

_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_MAX_PATH_LENGTH = 1024


def utc_now() -> str:
    """Timestamps in the Hub's format, which ``huggingface_hub.utils.parse_datetime`` expects."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    """The git blob id of a file: the ETag and ``oid`` the Hub reports for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_commit_id(revision: str) -> bool:
    """Whether ``revision`` has the shape of a full commit id (40 lowercase hex digits)."""
    return bool(_COMMIT_ID.match(revision))


@dataclass(frozen=True)
class RepoRecord:
    """A repository's identity and settings; its content lives in commits."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    object_id: str

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.repo_type,
            "id": self.repo_id,
            "private": self.private,
            "createdAt": self.created_at,
            "objectId": self.object_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RepoRecord:
        return cls(
            repo_type=data["type"],
            repo_id=data["id"],
            private=bool(data["private"]),
            created_at=data["createdAt"],
            object_id=data["objectId"],
        )


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: where its bytes are (``sha256``) and what the Hub calls it (``oid``)."""

    path: str
    size: int
    sha256: str
    oid: str


@dataclass(frozen=True)
class DirEntry:
    """A folder implied by the file paths; git has trees, the Hub reports them as ``directory``."""

    path: str
    oid: str


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repo, with the README metadata and tags it had at that point."""

    id: str
    parents: tuple[str, ...]
    title: str
    message: str
    author: str
    date: str
    files: Mapping[str, FileEntry]
    card_data: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()

    def entry(self, path: str) -> FileEntry | DirEntry | None:
        """The file or folder at ``path``; the root folder is ``""``."""
        path = path.strip("/")
        if path in self.files:
            return self.files[path]
        prefix = f"{path}/" if path else ""
        below = [entry for key, entry in self.files.items() if key.startswith(prefix)]
        if not below and path:
            return None
        return DirEntry(path=path, oid=_tree_oid(below))

    def list_dir(self, path: str, *, recursive: bool) -> list[FileEntry | DirEntry]:
        """Children of a folder, as /tree lists them (all descendants, folders too, when ``recursive``)."""
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        files = sorted((key, entry) for key, entry in self.files.items() if key.startswith(prefix))
        folders: dict[str, list[FileEntry]] = {}
        direct: list[FileEntry] = []
        for key, entry in files:
            parts = key[len(prefix) :].split("/")
            depth = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
            for level in range(1, depth + 1):
                folders.setdefault(prefix + "/".join(parts[:level]), []).append(entry)
            if recursive or len(parts) == 1:
                direct.append(entry)
        result: list[FileEntry | DirEntry] = [DirEntry(key, _tree_oid(v)) for key, v in folders.items()]
        result.extend(direct)
        return sorted(result, key=lambda item: item.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "title": self.title,
            "message": self.message,
            "author": self.author,
            "date": self.date,
            "files": {
                entry.path: {"size": entry.size, "sha256": entry.sha256, "oid": entry.oid}
                for entry in self.files.values()
            },
            "cardData": self.card_data,
            "tags": list(self.tags),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Commit:
        return cls(
            id=data["id"],
            parents=tuple(data["parents"]),
            title=data["title"],
            message=data["message"],
            author=data["author"],
            date=data["date"],
            files={path: FileEntry(path=path, **info) for path, info in data["files"].items()},
            card_data=data.get("cardData"),
            tags=tuple(data.get("tags", ())),
        )


def _tree_oid(entries: Sequence[FileEntry]) -> str:
    """A stable id for a folder's content; the client only uses it as an opaque value."""
    listing = "\n".join(f"{entry.path} {entry.oid}" for entry in sorted(entries, key=lambda e: e.path))
    return hashlib.sha1(listing.encode()).hexdigest()


@dataclass
class StagedBlob:
    """Uploaded bytes parked in the staging area until the commit that adds them lands or fails."""

    tmp_path: Path
    size: int
    sha256: str
    oid: str
    landed: bool = field(default=False, repr=False)

    def discard(self) -> None:
        """Remove the staged copy; harmless once the blob has landed in the store."""
        if not self.landed:
            self.tmp_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class AddFile:
    """Add or overwrite ``path`` with staged bytes."""

    path: str
    blob: StagedBlob


@dataclass(frozen=True)
class DeleteFile:
    """Delete the file ``path``; it must exist."""

    path: str


@dataclass(frozen=True)
class DeleteFolder:
    """Delete every file under ``path``; at least one must exist."""

    path: str


Operation = AddFile | DeleteFile | DeleteFolder


def validate_repo_path(path: str) -> str:
    """A file path safe to store and to hand back to clients that join it under a local folder.

    Rejects what could escape a download folder or confuse git: absolute paths, ``..`` and ``.``
    segments, empty segments, backslashes, control characters and anything under ``.git/``.
    """
    if not isinstance(path, str) or not path:
        raise BadRequest("Invalid path in commit: a file path must be a non-empty string.")
    if len(path) > _MAX_PATH_LENGTH:
        raise BadRequest(
            f"Invalid path in commit: '{path[:80]}...' is longer than {_MAX_PATH_LENGTH} characters."
        )
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise BadRequest(
            f"Invalid path in commit: '{path}' is absolute; paths are relative to the repo root."
        )
    if "\\" in path or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise BadRequest(f"Invalid path in commit: {path!r} contains a backslash or a control character.")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequest(f"Invalid path in commit: '{path}' has an empty, '.' or '..' segment.")
    if ".git" in parts:
        raise BadRequest(f"Invalid path in commit: '{path}' is inside a '.git' folder.")
    return path


def validate_repo_id(repo_type: str, repo_id: str) -> None:
    """Reject repo types the emulator does not serve and ids the Hub would not accept."""
    if repo_type not in REPO_TYPES:
        raise BadRequest(
            f"Repo type '{repo_type}' is not supported by the Hub emulator "
            f"(supported: {', '.join(REPO_TYPES)})."
        )
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(part) for part in parts):
        raise BadRequest(
            f"Invalid repo id '{repo_id}': expected 'namespace/name' made of letters, digits, "
            "'.', '_' or '-'."
        )
    if any("--" in part or ".." in part or part.endswith(".") for part in parts):
        raise BadRequest(f"Invalid repo id '{repo_id}': '--' and '..' are not allowed, nor a trailing '.'.")


def apply_operations(files: dict[str, FileEntry], operations: Sequence[Operation]) -> dict[str, FileEntry]:
    """``files`` (updated in place) after ``operations``, in order; raises on the first invalid one."""
    for operation in operations:
        path = validate_repo_path(
            operation.path.rstrip("/") if isinstance(operation, DeleteFolder) else operation.path
        )
        if isinstance(operation, AddFile):
            blob = operation.blob
            files[path] = FileEntry(path=path, size=blob.size, sha256=blob.sha256, oid=blob.oid)
        elif isinstance(operation, DeleteFile):
            if files.pop(path, None) is None:
                raise EntryNotFound(f"A file with this name doesn't exist: {path}")
        else:
            doomed = [key for key in files if key.startswith(f"{path}/")]
            if not doomed:
                raise EntryNotFound(f"A folder with this name doesn't exist: {path}")
            for key in doomed:
                del files[key]
    _check_no_file_folder_clash(files)
    return files


def _check_no_file_folder_clash(files: Mapping[str, FileEntry]) -> None:
    """Git cannot store ``a`` as a file and ``a/b`` under it; the Hub refuses such commits."""
    folders = {path.rsplit("/", 1)[0] for path in files if "/" in path}
    expanded = {
        "/".join(folder.split("/")[: i + 1]) for folder in folders for i in range(folder.count("/") + 1)
    }
    clash = sorted(expanded & files.keys())
    if clash:
        raise BadRequest(f"Invalid commit: '{clash[0]}' would be both a file and a folder.")
