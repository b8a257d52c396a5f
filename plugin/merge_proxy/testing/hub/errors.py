"""Errors the emulated Hub answers with, shaped so ``huggingface_hub`` raises its own exceptions.

The client does not look at the status code alone: it maps the ``X-Error-Code`` header to
``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``RemoteEntryNotFoundError`` (its URL-based
fallback only matches ``https://`` endpoints, which a local emulator is not). Every error therefore
carries the code the real Hub would send, and the HTTP layer turns it into headers plus a JSON
``{"error": ...}`` body, which the client appends to its exception message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class HubError(Exception):
    """A request the Hub would refuse; ``status`` and ``error_code`` become the HTTP answer."""

    status: int = 400
    error_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        #: Extra JSON fields next to ``error`` (the 409 of create_repo carries the repo ``url``).
        self.body: dict[str, Any] = dict(body or {})
        #: Extra response headers (a missing file still reports ``X-Repo-Commit``).
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(HubError):
    """Malformed payload, invalid path or invalid README metadata (the client raises BadRequestError)."""

    status = 400


class Unauthorized(HubError):
    """No token on an endpoint that needs one, or a token the emulator does not know."""

    status = 401


class Forbidden(HubError):
    """A valid token whose user may not write to the namespace."""

    status = 403


class Conflict(HubError):
    """The repo, branch or tag already exists."""

    status = 409


class PreconditionFailed(HubError):
    """``parentCommit`` is not the head of the branch any more: someone committed in between."""

    status = 412


class RepoNotFound(HubError):
    """Missing repo, or a private one the caller may not see (401 when anonymous, 404 otherwise)."""

    status = 404
    error_code = "RepoNotFound"


class RevisionNotFound(HubError):
    """Unknown branch, tag or commit id."""

    status = 404
    error_code = "RevisionNotFound"


class EntryNotFound(HubError):
    """Unknown file or folder at an existing revision."""

    status = 404
    error_code = "EntryNotFound"
