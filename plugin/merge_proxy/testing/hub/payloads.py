"""Decoding the NDJSON body of ``POST /api/{type}s/{id}/commit/{rev}``.

``huggingface_hub`` sends one JSON object per line: a ``header`` (summary, description, optional
``parentCommit``) then ``file`` (base64 content), ``deletedFile`` and ``deletedFolder`` operations.
Lines are decoded one at a time and file contents are staged to disk immediately, so a commit of
many large inline files never holds more than one of them in memory.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from merge_proxy.testing.hub.errors import BadRequest
from merge_proxy.testing.hub.records import AddFile, DeleteFile, DeleteFolder, Operation, is_commit_id
from merge_proxy.testing.hub.store import HubStore


@dataclass
class CommitRequest:
    """A decoded commit: what to write and how to describe it."""

    title: str
    message: str
    parent_commit: str | None
    operations: list[Operation] = field(default_factory=list)

    def discard(self) -> None:
        """Drop the staged uploads of a commit that will not be attempted."""
        for operation in self.operations:
            if isinstance(operation, AddFile):
                operation.blob.discard()


def iter_lines(stream: IO[bytes], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, read in large chunks.

    Iterating a raw WSGI input stream directly reads one byte per call, which takes seconds for
    the multi-megabyte base64 lines of large files.
    """
    parts: list[bytes] = []  # pieces of the current line; joined once, not re-copied per chunk
    while chunk := stream.read(chunk_size):
        *complete, rest = chunk.split(b"\n")
        if complete:
            yield b"".join([*parts, complete[0]])
            yield from complete[1:]
            parts = []
        parts.append(rest)
    if tail := b"".join(parts):
        yield tail


def parse_commit_payload(lines: Iterable[bytes], store: HubStore) -> CommitRequest:
    """Decode the NDJSON lines of a commit; staged files are discarded if any line is invalid."""
    request: CommitRequest | None = None
    try:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            item = _json_line(raw, number)
            key, value = item.get("key"), item.get("value")
            if not isinstance(value, dict):
                raise BadRequest(f"Invalid commit payload: line {number} has no object 'value'.")
            if request is None:
                request = _header(key, value)
            else:
                request.operations.append(_operation(key, value, number, store))
    except BaseException:
        if request is not None:
            request.discard()
        raise
    if request is None:
        raise BadRequest("Invalid commit payload: the body is empty; expected an NDJSON 'header' line.")
    return request


def _json_line(raw: bytes, number: int) -> dict[str, Any]:
    try:
        item = json.loads(raw)
    except ValueError as err:
        raise BadRequest(f"Invalid commit payload: line {number} is not JSON ({err}).") from err
    if not isinstance(item, dict):
        raise BadRequest(f"Invalid commit payload: line {number} is not a JSON object.")
    return item


def _header(key: Any, value: dict[str, Any]) -> CommitRequest:
    if key != "header":
        raise BadRequest(f"Invalid commit payload: the first line must be the 'header', got '{key}'.")
    summary = value.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise BadRequest("Invalid commit payload: the header needs a non-empty 'summary' (the commit title).")
    description = value.get("description") or ""
    parent = value.get("parentCommit")
    if parent is not None and (not isinstance(parent, str) or not is_commit_id(parent)):
        raise BadRequest(f"Invalid commit payload: parentCommit '{parent}' is not a 40-character commit id.")
    return CommitRequest(title=summary, message=str(description), parent_commit=parent)


def _operation(key: Any, value: dict[str, Any], number: int, store: HubStore) -> Operation:
    path = value.get("path")
    if not isinstance(path, str):
        raise BadRequest(f"Invalid commit payload: line {number} ('{key}') has no string 'path'.")
    if key == "file":
        return AddFile(path=path, blob=store.stage_bytes(_file_content(value, path)))
    if key == "deletedFile":
        return DeleteFile(path=path)
    if key == "deletedFolder":
        return DeleteFolder(path=path)
    if key == "lfsFile":
        raise BadRequest(
            f"'{path}' was sent as an LFS pointer, which the Hub emulator does not support: its preupload "
            "answer asks for every file inline ('regular' upload mode), so send the content as a 'file'."
        )
    raise BadRequest(f"Invalid commit payload: unknown operation '{key}' on line {number}.")


def _file_content(value: dict[str, Any], path: str) -> bytes:
    content, encoding = value.get("content"), value.get("encoding", "base64")
    if not isinstance(content, str):
        raise BadRequest(f"Invalid commit payload: file '{path}' has no string 'content'.")
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadRequest(
                f"Invalid commit payload: the base64 content of '{path}' does not decode."
            ) from err
    if encoding in ("utf-8", "utf8"):
        return content.encode("utf-8")
    raise BadRequest(f"Invalid commit payload: unknown encoding '{encoding}' for '{path}' (use base64).")
