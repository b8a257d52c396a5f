"""The Flask application: the Hub's HTTP routes, mapped onto the store.

Only the endpoints ``huggingface_hub`` 1.33 calls for repos, commits, downloads and search are
served; anything else answers 404 naming the unimplemented route, so a client feature the emulator
lacks fails loudly instead of half-working. Routes parse the request, check access and delegate:
storage rules live in ``store``, JSON shapes in ``views``, access rules in ``access``.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from flask import Flask, Response, g, jsonify, request, send_file
from werkzeug.exceptions import HTTPException

from merge_proxy.testing.hub import views
from merge_proxy.testing.hub.access import (
    can_read,
    readable_repo,
    require_namespace,
    require_user,
    writable_repo,
)
from merge_proxy.testing.hub.auth import TokenTable, User
from merge_proxy.testing.hub.cards import InvalidCard, parse_card
from merge_proxy.testing.hub.errors import BadRequest, Conflict, EntryNotFound, HubError
from merge_proxy.testing.hub.payloads import iter_lines, parse_commit_payload
from merge_proxy.testing.hub.records import DEFAULT_BRANCH, DirEntry, validate_repo_id
from merge_proxy.testing.hub.store import HubStore

logger = logging.getLogger(__name__)

#: Largest request body accepted; files arrive base64-encoded inside the commit body (4/3 of their size).
DEFAULT_MAX_REQUEST_BYTES = 512 * 1024 * 1024

_REPO = "/api/<any(models, datasets):kind>/<namespace>/<name>"
_RESOLVE = "<namespace>/<name>/resolve/<revision>/<path:filename>"
_NO_PULL_REQUESTS = "The Hub emulator does not support pull requests (create_pr); commit to a branch instead."


def create_app(
    store: HubStore, tokens: TokenTable, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> Flask:
    """A Flask app serving ``store`` to the holders of ``tokens``."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _register_hooks(app, tokens)
    _register_account_routes(app)
    _register_repo_routes(app, store)
    _register_commit_routes(app, store)
    _register_ref_routes(app, store)
    _register_file_routes(app, store)
    return app


# -- plumbing ------------------------------------------------------------------------------------


def _register_hooks(app: Flask, tokens: TokenTable) -> None:
    @app.before_request
    def authenticate() -> None:
        g.user = tokens.authenticate(request.headers.get("Authorization"))

    @app.errorhandler(HubError)
    def hub_error(err: HubError) -> Response:
        return _error(err.message, err.status, err.error_code, err.body, err.headers)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        status = err.code or 500
        if status in (404, 405):
            message = f"The Hub emulator does not implement {request.method} {request.path}"
        elif status == 413:
            message = (
                f"Request body larger than the emulator's limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
            )
        else:
            message = err.description or err.name
        return _error(message, status)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        logger.exception("Hub emulator failed on %s %s", request.method, request.path)
        return _error(f"Hub emulator internal error: {type(err).__name__}: {err}", 500)


def _error(
    message: str,
    status: int,
    code: str | None = None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A Hub-style error: JSON ``error``, plus the ``X-Error-*`` headers the client maps to exceptions."""
    if status != 413:
        _drain_request_body()
    response = jsonify({"error": message, **(body or {})})
    response.status_code = status
    response.headers["X-Error-Message"] = " ".join(message.split()).encode("ascii", "replace").decode()[:500]
    if code:
        response.headers["X-Error-Code"] = code
    response.headers.update(headers or {})
    return response


def _drain_request_body() -> None:
    """Read what is left of the body: closing on unread bytes would reset the socket under the client."""
    try:
        while request.stream.read(1 << 20):
            pass
    except Exception:  # best effort on an already failing request
        logger.debug("could not drain the request body", exc_info=True)


def _user() -> User | None:
    user: User | None = g.get("user")
    return user


def _repo_type(kind: str) -> str:
    return kind[:-1]  # "models" -> "model"


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _expand() -> list[str]:
    return request.args.getlist("expand") + request.args.getlist("expand[]")


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise BadRequest("Expected a JSON object as request body.")
    return body


def _endpoint() -> str:
    return request.host_url.rstrip("/")


def _named_repo(body: dict[str, Any], user: User) -> tuple[str, str]:
    """Repo type and id from a create/delete payload; the namespace defaults to the caller's."""
    name, namespace = body.get("name"), body.get("organization") or user.name
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise BadRequest("Expected {'name': <repo name>, 'organization': <namespace or null>, 'type': ...}.")
    return body.get("type") or "model", f"{namespace}/{name}"


def _visibility(body: dict[str, Any]) -> bool | None:
    """``private`` from a create or settings payload (``visibility`` since 1.x, ``private`` before)."""
    visibility = body.get("visibility")
    if visibility is not None:
        if visibility not in ("private", "public"):
            raise BadRequest(
                f"Unsupported visibility '{visibility}': the emulator knows 'private' and 'public'."
            )
        return bool(visibility == "private")
    private = body.get("private")
    return None if private is None else bool(private)


# -- accounts ------------------------------------------------------------------------------------


def _register_account_routes(app: Flask) -> None:
    @app.get("/api/whoami-v2")
    def whoami() -> Response:
        user = require_user(_user(), "call whoami")
        return jsonify(views.whoami(user.name, user.orgs))

    @app.post("/api/validate-yaml")
    def validate_yaml() -> Response | tuple[Response, int]:
        body = _json_body()
        content, repo_type = body.get("content"), body.get("repoType") or "model"
        if not isinstance(content, str):
            raise BadRequest("validate-yaml expects {'content': <README text>, 'repoType': ...}.")
        try:
            parse_card(content, repo_type)
        except InvalidCard as err:
            return jsonify({"error": err.message, "errors": [{"message": err.message}], "warnings": []}), 400
        return jsonify({"errors": [], "warnings": []})


# -- repos ---------------------------------------------------------------------------------------


def _register_repo_routes(app: Flask, store: HubStore) -> None:
    @app.post("/api/repos/create")
    def create_repo() -> Response:
        user = require_user(_user(), "create a repo")
        body = _json_body()
        repo_type, repo_id = _named_repo(body, user)
        validate_repo_id(repo_type, repo_id)
        require_namespace(user, repo_id.split("/")[0], f"create a {repo_type} repo")
        try:
            record = store.create_repo(repo_type, repo_id, private=bool(_visibility(body)), author=user.name)
        except Conflict as err:
            existing = store.get_repo(repo_type, repo_id)
            url = views.repo_url(_endpoint(), existing) if existing else None
            raise Conflict(err.message, body={"url": url}) from err
        return jsonify({"url": views.repo_url(_endpoint(), record), "name": repo_id, "id": record.object_id})

    @app.delete("/api/repos/delete")
    def delete_repo() -> Response:
        user = require_user(_user(), "delete a repo")
        repo_type, repo_id = _named_repo(_json_body(), user)
        store.delete_repo(writable_repo(store, repo_type, repo_id, user, "delete a repo"))
        return jsonify({})

    @app.put(f"{_REPO}/settings")
    def update_settings(kind: str, namespace: str, name: str) -> Response:
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user(), "change settings")
        private = _visibility(_json_body())
        if private is not None:
            store.set_private(record, private)
        return jsonify({})

    @app.get("/api/<any(models, datasets):kind>")
    def list_repos(kind: str) -> Response:
        repo_type = _repo_type(kind)
        visible = [record for record in store.list_repos(repo_type) if can_read(record, _user())]
        infos = [
            views.repo_info(r, store.branch_head(r, DEFAULT_BRANCH), files_metadata=False) for r in visible
        ]
        full, card_data = _flag(request.args.get("full")), _flag(request.args.get("cardData"))
        selected = [
            views.select_fields(info, repo_type, full=full, card_data=card_data, expand=_expand())
            for info in _matching(_sorted(infos))
        ]
        limit = request.args.get("limit", type=int)
        return jsonify(selected[:limit] if limit and limit > 0 else selected)

    @app.get(_REPO)
    @app.get(f"{_REPO}/revision/<revision>")
    def repo_info(kind: str, namespace: str, name: str, revision: str | None = None) -> Response:
        record = readable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user())
        commit = store.resolve(record, revision) if revision else store.branch_head(record, DEFAULT_BRANCH)
        info = views.repo_info(record, commit, files_metadata=True)
        if _expand():
            info = views.select_fields(info, record.repo_type, full=False, card_data=False, expand=_expand())
        return jsonify(info)


def _matching(infos: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Apply the listing filters: tags are ANDed, ``search`` is a case-insensitive id substring."""
    filters, searches = request.args.getlist("filter"), [s.lower() for s in request.args.getlist("search")]
    author, pipeline_tag = request.args.get("author"), request.args.get("pipeline_tag")
    gated = request.args.get("gated")
    for info in infos:
        if author and info["author"].lower() != author.lower():
            continue
        if any(term not in info["id"].lower() for term in searches):
            continue
        if any(tag not in info["tags"] for tag in filters):
            continue
        if pipeline_tag and info.get("pipeline_tag") != pipeline_tag:
            continue
        if gated is not None and _flag(gated) != bool(info["gated"]):
            continue
        yield info


_SORT_ALIASES = {
    "modelId": "id",
    "last_modified": "lastModified",
    "created_at": "createdAt",
    "trending_score": "trendingScore",
}


def _sorted(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order by ``sort`` (default: newest first); ``direction=1`` asks for ascending order."""
    key = request.args.get("sort") or "createdAt"
    key = _SORT_ALIASES.get(key, key)
    descending = request.args.get("direction") != "1"
    by_age = sorted(infos, key=lambda info: info["createdAt"], reverse=descending)  # tie-breaker
    return sorted(by_age, key=lambda info: "" if info.get(key) is None else info[key], reverse=descending)


# -- commits -------------------------------------------------------------------------------------


def _register_commit_routes(app: Flask, store: HubStore) -> None:
    @app.post(f"{_REPO}/preupload/<revision>")
    def preupload(kind: str, namespace: str, name: str, revision: str) -> Response:
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user(), "upload files")
        if _flag(request.args.get("create_pr")):
            raise BadRequest(_NO_PULL_REQUESTS)
        head = store.commit_target(record, revision)
        files = _json_body().get("files")
        if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) for f in files
        ):
            raise BadRequest("preupload expects {'files': [{'path': ..., 'size': ..., 'sample': ...}, ...]}.")
        answer = []
        for item in files:
            # "regular" for every file: contents then arrive inline in the commit, never through LFS or Xet.
            entry: dict[str, Any] = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            if head is not None and item["path"] in head.files:
                entry["oid"] = head.files[item["path"]].oid  # lets the client skip unchanged files
            answer.append(entry)
        return jsonify({"files": answer, "commitOid": head.id if head else None})

    @app.post(f"{_REPO}/commit/<revision>")
    def commit(kind: str, namespace: str, name: str, revision: str) -> Response:
        user = require_user(_user(), "commit")
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", user, "commit")
        if _flag(request.args.get("create_pr")):
            raise BadRequest(_NO_PULL_REQUESTS)
        if request.mimetype == "application/json":
            raise BadRequest("The Hub emulator accepts commits as NDJSON (application/x-ndjson) only.")
        payload = parse_commit_payload(iter_lines(request.stream), store)
        result = store.commit(
            record,
            revision,
            payload.operations,
            title=payload.title,
            message=payload.message,
            author=user.name,
            parent_commit=payload.parent_commit,
        )
        url = f"{views.repo_url(_endpoint(), record)}/commit/{result.id}"
        return jsonify({"success": True, "commitOid": result.id, "commitUrl": url, "hookOutput": ""})

    @app.get(f"{_REPO}/commits/<revision>")
    def list_commits(kind: str, namespace: str, name: str, revision: str) -> Response:
        record = readable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user())
        formatted = "formatted" in _expand()
        history = store.history(record, store.resolve(record, revision))
        return jsonify([views.commit_entry(item, formatted=formatted) for item in history])


# -- refs ----------------------------------------------------------------------------------------


def _register_ref_routes(app: Flask, store: HubStore) -> None:
    @app.get(f"{_REPO}/refs")
    def list_refs(kind: str, namespace: str, name: str) -> Response:
        record = readable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user())
        include_prs = _flag(request.args.get("include_prs"))
        return jsonify(
            views.refs_document(
                store.refs(record, "heads"), store.refs(record, "tags"), include_prs=include_prs
            )
        )

    @app.post(f"{_REPO}/branch/<branch>")
    def create_branch(kind: str, namespace: str, name: str, branch: str) -> Response:
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user(), "create a branch")
        start = _json_body().get("startingPoint") or DEFAULT_BRANCH
        store.create_ref(record, "heads", branch, store.resolve(record, start))
        return jsonify({})

    @app.delete(f"{_REPO}/branch/<branch>")
    def delete_branch(kind: str, namespace: str, name: str, branch: str) -> Response:
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user(), "delete a branch")
        store.delete_ref(record, "heads", branch)
        return jsonify({})

    @app.post(f"{_REPO}/tag/<revision>")
    def create_tag(kind: str, namespace: str, name: str, revision: str) -> Response:
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user(), "create a tag")
        tag = _json_body().get("tag")
        if not isinstance(tag, str):
            raise BadRequest("create_tag expects {'tag': <name>}.")
        store.create_ref(record, "tags", tag, store.resolve(record, revision))
        return jsonify({})

    @app.delete(f"{_REPO}/tag/<tag>")
    def delete_tag(kind: str, namespace: str, name: str, tag: str) -> Response:
        record = writable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user(), "delete a tag")
        store.delete_ref(record, "tags", tag)
        return jsonify({})


# -- files ---------------------------------------------------------------------------------------


def _register_file_routes(app: Flask, store: HubStore) -> None:
    @app.get(f"{_REPO}/tree/<revision>")
    @app.get(f"{_REPO}/tree/<revision>/<path:path>")
    def list_tree(kind: str, namespace: str, name: str, revision: str, path: str = "") -> Response:
        record = readable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user())
        commit = store.resolve(record, revision)
        if not isinstance(commit.entry(path), DirEntry):
            raise EntryNotFound(
                f"Entry not found: no folder '{path}' at revision '{revision}'.",
                headers={"X-Repo-Commit": commit.id},
            )
        entries = commit.list_dir(path, recursive=_flag(request.args.get("recursive")))
        return jsonify([views.tree_entry(entry) for entry in entries])

    @app.post(f"{_REPO}/paths-info/<revision>")
    def paths_info(kind: str, namespace: str, name: str, revision: str) -> Response:
        record = readable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user())
        commit = store.resolve(record, revision)
        # huggingface_hub posts a form with repeated "paths"; JSON is accepted for other clients.
        paths = _json_body().get("paths") if request.is_json else request.form.getlist("paths")
        if not isinstance(paths, list):
            raise BadRequest("paths-info expects a list of 'paths'.")
        entries = [commit.entry(path) for path in paths if isinstance(path, str) and path.strip("/")]
        return jsonify([views.tree_entry(entry) for entry in entries if entry is not None])

    @app.get(f"/{_RESOLVE}", defaults={"kind": "models"})
    @app.get(f"/<any(datasets):kind>/{_RESOLVE}")
    def resolve_file(kind: str, namespace: str, name: str, revision: str, filename: str) -> Response:
        record = readable_repo(store, _repo_type(kind), f"{namespace}/{name}", _user())
        commit = store.resolve(record, revision)
        entry = commit.files.get(filename)
        if entry is None:
            raise EntryNotFound(
                f"Entry not found: '{filename}' at revision '{revision}'.",
                headers={"X-Repo-Commit": commit.id},
            )
        response = send_file(
            store.blob_path(entry),
            etag=entry.oid,
            conditional=True,  # answers Range requests, which the client sends to resume downloads
            mimetype=mimetypes.guess_type(filename)[0] or "application/octet-stream",
            download_name=PurePosixPath(filename).name,  # not the blob's content-addressed name
        )
        response.headers["X-Repo-Commit"] = commit.id
        return response
