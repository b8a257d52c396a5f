"""The JSON documents the Hub answers with, built from store records.

Field names and shapes follow what ``huggingface_hub`` 1.33 parses (``ModelInfo``, ``DatasetInfo``,
``RepoFile``, ``RepoFolder``, ``GitCommitInfo``, ``GitRefs``): camelCase where the Hub uses it,
``rfilename`` in siblings, ``oid`` for blob ids, timestamps as ``2024-01-01T00:00:00.000Z``.
Listings return a subset of fields by default and more on ``full``/``cardData``/``expand``, as the
Hub does, so that code relying on a field the Hub only sends on request fails here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from merge_proxy.testing.hub.records import Commit, DirEntry, FileEntry, RepoRecord

#: Fields of a repo listing entry when neither ``full`` nor ``expand`` is asked for.
_LIST_FIELDS: dict[str, tuple[str, ...]] = {
    "model": (
        "likes",
        "downloads",
        "trendingScore",
        "private",
        "tags",
        "pipeline_tag",
        "library_name",
        "createdAt",
    ),
    "dataset": (
        "author",
        "sha",
        "lastModified",
        "private",
        "gated",
        "disabled",
        "downloads",
        "likes",
        "tags",
        "trendingScore",
        "createdAt",
    ),
}
#: Fields ``full=true`` adds to a listing entry.
_FULL_FIELDS: tuple[str, ...] = ("author", "sha", "lastModified", "gated", "disabled", "siblings")


def repo_url(endpoint: str, record: RepoRecord) -> str:
    """The web URL of a repo; ``huggingface_hub.RepoUrl`` parses the type from the ``datasets/`` prefix."""
    prefix = "datasets/" if record.repo_type == "dataset" else ""
    return f"{endpoint}/{prefix}{record.repo_id}"


def repo_info(record: RepoRecord, commit: Commit | None, *, files_metadata: bool = True) -> dict[str, Any]:
    """Everything ``model_info``/``dataset_info`` may read about a repo at a commit."""
    card = commit.card_data if commit else None
    files = sorted(commit.files.values(), key=lambda entry: entry.path) if commit else []
    info: dict[str, Any] = {
        "_id": record.object_id,
        "id": record.repo_id,
        "author": record.namespace,
        "sha": commit.id if commit else None,
        "lastModified": commit.date if commit else record.created_at,
        "createdAt": record.created_at,
        "private": record.private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "downloadsAllTime": 0,
        "likes": 0,
        "trendingScore": 0,
        "tags": list(commit.tags) if commit else [],
        "siblings": [_sibling(entry, files_metadata) for entry in files],
        "usedStorage": sum(entry.size for entry in files),
    }
    if card is not None:
        info["cardData"] = card
    if record.repo_type == "model":
        info["modelId"] = record.repo_id
        info["spaces"] = []
        for key in ("library_name", "pipeline_tag"):
            if card and isinstance(card.get(key), str):
                info[key] = card[key]
    else:
        info["description"] = None
        info["citation"] = None
    return info


def _sibling(entry: FileEntry, files_metadata: bool) -> dict[str, Any]:
    sibling: dict[str, Any] = {"rfilename": entry.path, "size": entry.size}
    if files_metadata:
        sibling["blobId"] = entry.oid
    return sibling


def select_fields(
    info: dict[str, Any],
    repo_type: str,
    *,
    full: bool,
    card_data: bool,
    expand: Sequence[str],
) -> dict[str, Any]:
    """The part of ``info`` a listing returns for the requested ``full``/``cardData``/``expand``."""
    if expand:
        wanted: Iterable[str] = expand
    else:
        wanted = list(_LIST_FIELDS[repo_type]) + (list(_FULL_FIELDS) if full else [])
        if card_data:
            wanted = [*wanted, "cardData"]
    selected = {"_id": info["_id"], "id": info["id"]}
    if repo_type == "model" and not expand:
        selected["modelId"] = info["id"]
    for key in wanted:
        if key in info:
            selected[key] = info[key]
    if "siblings" in selected:
        selected["siblings"] = [{"rfilename": s["rfilename"]} for s in selected["siblings"]]
    return selected


def tree_entry(entry: FileEntry | DirEntry) -> dict[str, Any]:
    """One /tree or /paths-info item; the client builds RepoFile or RepoFolder from ``type``."""
    if isinstance(entry, DirEntry):
        return {"type": "directory", "oid": entry.oid, "size": 0, "path": entry.path}
    return {"type": "file", "oid": entry.oid, "size": entry.size, "path": entry.path}


def commit_entry(commit: Commit, *, formatted: bool = False) -> dict[str, Any]:
    """One item of /commits, as ``list_repo_commits`` parses it."""
    item: dict[str, Any] = {
        "id": commit.id,
        "title": commit.title,
        "message": commit.message,
        "date": commit.date,
        "authors": [{"user": commit.author, "avatar": None}],
    }
    if formatted:
        item["formatted"] = {"title": commit.title, "message": commit.message}
    return item


def refs_document(branches: dict[str, str], tags: dict[str, str], *, include_prs: bool) -> dict[str, Any]:
    """The /refs answer; the emulator has no pull requests and no converts."""
    document: dict[str, Any] = {
        "branches": [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in branches.items()
        ],
        "converts": [],
        "tags": [
            {"name": name, "ref": f"refs/tags/{name}", "targetCommit": oid} for name, oid in tags.items()
        ],
    }
    if include_prs:
        document["pullRequests"] = []
    return document


def whoami(name: str, orgs: Iterable[str]) -> dict[str, Any]:
    """The /whoami-v2 answer for a user with a write token."""
    return {
        "type": "user",
        "id": name,
        "name": name,
        "fullname": name,
        "email": None,
        "emailVerified": False,
        "canPay": False,
        "isPro": False,
        "periodEnd": None,
        "avatarUrl": "",
        "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "write"} for org in sorted(orgs)],
        "auth": {"type": "access_token", "accessToken": {"displayName": "hub-emulator", "role": "write"}},
    }
