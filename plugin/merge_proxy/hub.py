"""Talking to the Hugging Face Hub (or any server speaking its API, such as our emulator).

Everything goes through huggingface_hub; this module only pins a download to a commit sha, limits it
to the files a step needs, and turns the client's exceptions into messages that say what to do.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from merge_proxy.errors import MergeProxyError

if TYPE_CHECKING:  # huggingface_hub is imported where the Hub is used
    from huggingface_hub import CommitOperationDelete, HfApi

logger = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


class HubError(MergeProxyError):
    """A Hub request failed for a reason the user can fix (id, revision, token, network)."""


class HubUnreachableError(HubError):
    """The Hub could not be reached at all (offline, DNS, proxy): nothing is known of the repo, so a dry
    run says what it could not check instead of failing."""


@dataclass(frozen=True)
class HubOptions:
    """Where and as whom to reach the Hub. None means huggingface_hub's own defaults (HF_ENDPOINT,
    HF_TOKEN or the saved login, HF_HOME's cache)."""

    endpoint: str | None = None
    token: str | None = None
    cache_dir: Path | None = None

    def api(self) -> HfApi:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and ".." not in text


def is_repo_id(text: str) -> bool:
    """``ORG/NAME``, a repo one can create and push to (looks_like_repo_id also accepts a bare NAME)."""
    return looks_like_repo_id(text) and text.count("/") == 1


def is_commit_sha(revision: object) -> bool:
    """A full commit sha (40 lowercase hex), as the Hub answers it; a branch or tag can move."""
    return isinstance(revision, str) and bool(_SHA.fullmatch(revision))


def split_revision(source: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); no ``@`` -> (source, None)."""
    if "@" in source:
        repo, rev = source.rsplit("@", 1)
        return repo, rev or None
    return source, None


def explain_error(err: Exception, repo_id: str, revision: str | None, options: HubOptions) -> HubError:
    """A huggingface_hub exception as one actionable line (never the request headers, so no token)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = options.endpoint or "the Hub"
    if isinstance(err, GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its conditions on its Hub page, then retry with a token")
    if isinstance(err, RepositoryNotFoundError):
        return HubError(
            f"repository {repo_id} not found on {where}, or private: check the id, or authenticate "
            "(hf auth login, or HF_TOKEN) with a token that can read it"
        )
    if isinstance(err, RevisionNotFoundError):
        return HubError(f"revision {revision!r} of {repo_id} not found: use a branch, tag or commit sha it has")
    if isinstance(err, LocalEntryNotFoundError):  # before EntryNotFoundError, its base class
        return HubUnreachableError(
            f"cannot reach {where} to fetch {repo_id} and it is not in the local cache: check the network "
            "or HF_ENDPOINT, or unset HF_HUB_OFFLINE"
        )
    if isinstance(err, EntryNotFoundError):
        return HubError(f"{repo_id}@{revision or 'main'}: {err}")
    if isinstance(err, HfHubHTTPError):
        # str(err) spans lines (status, a documentation link, the server's text): keep the status
        # line and the server's own message (once: some servers' status line already holds it)
        status = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        server = " ".join((getattr(err, "server_message", None) or "").split())
        said = f"{status}" + (f" ({server})" if server and server not in status else "")
        code = getattr(getattr(err, "response", None), "status_code", None)
        fix = {
            401: "the token (HF_TOKEN, or `hf auth login`) is invalid or expired: log in again or fix HF_TOKEN",
            403: f"the token may not do this in {repo_id.split('/')[0]}: use a token with the access it needs "
                 "(write access, to push; or push to a namespace of your own)",
        }.get(code)
        return HubError(f"{where} refused a request for {repo_id}: {said}" + (f"; {fix}" if fix else ""))
    if isinstance(err, (ConnectionError, OSError)) or type(err).__module__.startswith(("httpx", "httpcore")):
        return HubUnreachableError(
            f"cannot reach {where} for {repo_id} ({type(err).__name__}: {err}); check the network or HF_ENDPOINT")
    return HubError(f"fetching {repo_id} from {where} failed: {err}")


def repo_files(repo_id: str, revision: str | None, options: HubOptions) -> tuple[str, list[str]]:
    """(commit sha, file names) of a model repo at a revision: one request, nothing downloaded."""
    try:
        info = options.api().model_info(repo_id, revision=revision, files_metadata=False)
    except Exception as err:  # noqa: BLE001 - every client error is explained to the user
        raise explain_error(err, repo_id, revision, options) from err
    return info.sha, [s.rfilename for s in (info.siblings or [])]


def fetch_snapshot(
    repo_id: str, sha: str, allow_patterns: Sequence[str], options: HubOptions
) -> Path:
    """Download (or reuse from the cache) only ``allow_patterns`` of ``repo_id`` at commit ``sha``."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            revision=sha,
            allow_patterns=list(allow_patterns),
            cache_dir=options.cache_dir,
            token=options.token,
            endpoint=options.endpoint,
        )
    except Exception as err:  # noqa: BLE001
        raise explain_error(err, repo_id, sha, options) from err
    logger.debug("fetched %s@%s to %s", repo_id, sha, path)
    return Path(path)


def stale_file_deletes(api: HfApi, repo_id: str, revision: str | None, keep: set[str],
                       repo_type: str = "model") -> tuple[str, list[CommitOperationDelete]]:
    """The head commit of ``revision`` and a delete for each file there that is not in ``keep``.

    ``create_commit`` only adds: a commit of ``keep`` plus these deletes leaves the repo holding
    exactly ``keep`` (re-publishing a single-file model over a sharded one would otherwise keep the
    old index, which loaders follow; a re-pushed result would keep the last run's plots). Pass the
    head as ``parent_commit``, so a commit made in between fails instead of mixing files.
    ``.gitattributes`` is the Hub's own file and stays.
    """
    from huggingface_hub import CommitOperationDelete

    head = api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    present = api.list_repo_files(repo_id, revision=head, repo_type=repo_type)
    stale = sorted(set(present) - keep - {".gitattributes"})
    if stale:
        logger.info("%s: removing %d file(s) the new version does not have: %s", repo_id, len(stale),
                    ", ".join(stale[:8]) + (" ..." if len(stale) > 8 else ""))
    return head, [CommitOperationDelete(path_in_repo=name) for name in stale]
