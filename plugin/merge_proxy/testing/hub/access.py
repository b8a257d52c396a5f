"""Visibility and write rules, answered with the status codes the Hub uses.

The Hub hides private repos instead of forbidding them: an anonymous caller gets 401 and another
user 404, both with ``X-Error-Code: RepoNotFound``, so the client raises ``RepositoryNotFoundError``
whether the repo is missing or just not theirs. Writes need a token (401 otherwise) whose user owns
the namespace (403 otherwise).
"""

from __future__ import annotations

from merge_proxy.testing.hub.auth import User
from merge_proxy.testing.hub.errors import Forbidden, RepoNotFound, Unauthorized
from merge_proxy.testing.hub.records import RepoRecord
from merge_proxy.testing.hub.store import HubStore


def can_read(record: RepoRecord, user: User | None) -> bool:
    """Public repos are readable by anyone; private ones only by users who may write to them."""
    return not record.private or (user is not None and user.can_write(record.namespace))


def require_user(user: User | None, action: str) -> User:
    """The caller, who must have sent a valid token to ``action``."""
    if user is None:
        raise Unauthorized(
            f"You must be authenticated to {action}: send a token as 'Authorization: Bearer <token>'."
        )
    return user


def readable_repo(store: HubStore, repo_type: str, repo_id: str, user: User | None) -> RepoRecord:
    """The repo if the caller may see it; RepoNotFound (401 anonymous, 404 otherwise) if not."""
    record = store.get_repo(repo_type, repo_id)
    if record is None or not can_read(record, user):
        hint = " No token was sent." if user is None else ""
        raise RepoNotFound(
            f"Repository Not Found: {repo_type} repo '{repo_id}' does not exist or is private.{hint}",
            status=401 if user is None else 404,
        )
    return record


def writable_repo(
    store: HubStore, repo_type: str, repo_id: str, user: User | None, action: str
) -> RepoRecord:
    """The repo if the caller may change it; 401, RepoNotFound or 403 otherwise."""
    user = require_user(user, action)
    record = readable_repo(store, repo_type, repo_id, user)
    require_namespace(user, record.namespace, action)
    return record


def require_namespace(user: User, namespace: str, action: str) -> None:
    """Forbidden unless ``user`` may write to ``namespace``."""
    if not user.can_write(namespace):
        raise Forbidden(
            f"You don't have the rights to {action} in the namespace '{namespace}': "
            f"the token belongs to '{user.name}'."
        )
