"""Running the emulator: in a background thread for tests, or in the foreground for a CLI.

The server is werkzeug's threaded WSGI server bound to a loopback address: the emulator has
fixed tokens and no rate limits, so it must never be reachable from another machine. Binding to
port 0 lets the OS pick a free port atomically, so parallel test runs never race for one.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from merge_proxy.errors import ConfigError
from merge_proxy.testing.hub.app import DEFAULT_MAX_REQUEST_BYTES, create_app
from merge_proxy.testing.hub.auth import TokenTable
from merge_proxy.testing.hub.store import HubStore

logger = logging.getLogger(__name__)

DEFAULT_USER = "tester"
DEFAULT_TOKEN = "hf_test_tester_token"
#: Addresses the emulator agrees to bind; "localhost" is pinned to IPv4 so the endpoint is unambiguous.
LOOPBACK_HOSTS: Mapping[str, str] = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}


class _LoggingRequestHandler(WSGIRequestHandler):
    """Request lines go to ``logging`` at DEBUG instead of werkzeug's own stderr handler."""

    def log(self, type: str, message: str, *args: Any) -> None:  # werkzeug's signature
        level = logging.WARNING if type == "error" else logging.DEBUG
        logger.log(level, "%s " + message, self.address_string(), *args)


class HubEmulator:
    """A local Hugging Face Hub that an unmodified ``huggingface_hub`` client talks to via ``HF_ENDPOINT``.

    Use it as a context manager; the server runs in a daemon thread on a free loopback port::

        with HubEmulator(tmp_path) as hub:
            env = hub.client_env()        # HF_ENDPOINT, HF_TOKEN... for a client subprocess
            api = HfApi(endpoint=hub.endpoint, token=hub.token)   # or in-process, explicitly

    ``tokens`` maps each accepted token to a user name (default: user ``tester`` with token
    ``hf_test_tester_token``); ``orgs`` optionally maps user names to organisations they may write
    to. Data persists under ``data_dir``: another emulator on the same folder serves the same repos
    and commit ids. Without ``data_dir`` a temporary folder is used and deleted on ``stop()``.
    Only one running emulator may use a data directory at a time (enforced with a lock file).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        orgs: Mapping[str, Iterable[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        initial_commit: bool = True,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"the Hub emulator only binds loopback addresses ({', '.join(LOOPBACK_HOSTS)}), not "
                f"'{host}': its tokens are fixed and it has no access control worth exposing to a network"
            )
        if not 0 <= port <= 65535:
            raise ConfigError(f"invalid port {port}: use 0 (any free port) or 1-65535")
        self._host = LOOPBACK_HOSTS[host]
        self._port = port
        self._tokens = TokenTable(tokens or {DEFAULT_TOKEN: DEFAULT_USER}, orgs)
        self._owns_data_dir = data_dir is None
        self._data_dir = Path(tempfile.mkdtemp(prefix="hub-emulator-") if data_dir is None else data_dir).resolve()
        self._initial_commit = initial_commit
        self._max_request_bytes = max_request_bytes
        self._store: HubStore | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> HubEmulator:
        """Bind the port and serve in a background thread; returns self."""
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"hub-emulator-{server.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("Hub emulator serving %s at %s", self._data_dir, self.endpoint)
        return self

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until Ctrl-C; ``on_ready`` receives the endpoint once bound."""
        server = self._bind()
        logger.info("Hub emulator serving %s at %s", self._data_dir, self.endpoint)
        if on_ready is not None:
            on_ready(self.endpoint)
        try:
            server.serve_forever(poll_interval=0.5)  # werkzeug returns on KeyboardInterrupt
        finally:
            self._release()

    def stop(self) -> None:
        """Stop serving and wait for the server thread; a temporary data directory is deleted."""
        if self._server is not None:
            self._server.shutdown()
            if self._thread is not None:
                self._thread.join(timeout=10)
        if not self._stopped:
            self._release()

    def _bind(self) -> BaseWSGIServer:
        if self._server is not None or self._stopped:
            raise RuntimeError("this HubEmulator was already started; create a new one on the same data_dir")
        try:
            return self._create_server()
        except BaseException:
            self._release()
            raise

    def _create_server(self) -> BaseWSGIServer:
        self._store = HubStore(self._data_dir, initial_commit=self._initial_commit)
        app = create_app(self._store, self._tokens, max_request_bytes=self._max_request_bytes)
        listener = self._listen()
        try:  # werkzeug duplicates the descriptor, so ours is closed either way
            self._server = make_server(
                self._host,
                self._port,
                app,
                threaded=True,
                request_handler=_LoggingRequestHandler,
                fd=listener.fileno(),
            )
        finally:
            listener.close()
        return self._server

    def _listen(self) -> socket.socket:
        """Bind here rather than in werkzeug, which prints and calls sys.exit() when the port is taken."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
        except OSError as err:
            listener.close()
            raise ConfigError(
                f"the Hub emulator cannot listen on {self._host}:{self._port}: {err.strerror}"
            ) from err
        return listener

    def _release(self) -> None:
        if self._server is not None:
            self._server.server_close()
        if self._store is not None:
            self._store.close()
        was_serving = self._server is not None
        self._server, self._thread, self._stopped = None, None, True
        if self._owns_data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        if was_serving:
            logger.info("Hub emulator on %s stopped", self._data_dir)

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what clients need -----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The base URL to use as ``HF_ENDPOINT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the Hub emulator is not running; use it as a context manager or call start()")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._server.port}"

    @property
    def token(self) -> str:
        """The default token: the first one configured (``hf_test_tester_token`` by default)."""
        return self._tokens.first_token

    @property
    def data_dir(self) -> Path:
        """Where repos, commits and blobs are stored."""
        return self._data_dir

    @property
    def store(self) -> HubStore:
        """Direct access to the repositories, for assertions that bypass HTTP."""
        if self._store is None:
            raise RuntimeError("the Hub emulator has not been started")
        return self._store

    def token_for(self, user: str) -> str:
        """A configured token of ``user``."""
        return self._tokens.token_for(user)

    def client_env(
        self, *, token: str | bool | None = None, hf_home: str | os.PathLike[str] | None = None
    ) -> dict[str, str]:
        """Environment variables that point a ``huggingface_hub`` process at this emulator.

        ``token``: None or True for the default token, a string for another one, False for an
        anonymous client (no implicit token either). ``HF_HUB_OFFLINE`` is forced off because a CI
        setting it would make the client refuse to talk to the emulator. ``hf_home`` sets
        ``HF_HOME`` so the client's cache and stored token stay out of the user's home.
        """
        if token is None or token is True:
            token = self.token
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": token or "",
            "HUGGING_FACE_HUB_TOKEN": token or "",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0" if token else "1",
        }
        if hf_home is not None:
            env["HF_HOME"] = str(hf_home)
        return env


def serve_forever(
    host: str,
    port: int,
    data_dir: str | os.PathLike[str],
    tokens: Mapping[str, str],
    on_ready: Callable[[str], None] | None = None,
    *,
    orgs: Mapping[str, Iterable[str]] | None = None,
    initial_commit: bool = True,
) -> None:
    """Run an emulator in the foreground until Ctrl-C (for a CLI): ``on_ready(endpoint)`` once listening.

    Raises ``ConfigError`` for a non-loopback host, a port that is taken or invalid, or malformed tokens.
    """
    emulator = HubEmulator(
        data_dir, tokens=tokens, orgs=orgs, host=host, port=port, initial_commit=initial_commit
    )
    emulator.serve_forever(on_ready)
