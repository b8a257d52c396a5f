"""A local Hugging Face Hub for tests and offline demos.

``HubEmulator`` serves repos, commits, downloads and search over HTTP on a loopback port, so that
an unmodified ``huggingface_hub`` client pointed at it with ``HF_ENDPOINT`` publishes and fetches
models exactly as it would on huggingface.co, without network access or real credentials::

    from merge_proxy.testing.hub import HubEmulator

    with HubEmulator(data_dir) as hub:                  # user "tester", token hub.token
        subprocess.run([...], env={**os.environ, **hub.client_env()})   # sets HF_ENDPOINT, HF_TOKEN
        HfApi(endpoint=hub.endpoint, token=hub.token)   # in-process clients need explicit values

``serve_forever(host, port, data_dir, tokens, on_ready)`` runs one in the foreground for a CLI, and
``pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]`` provides the ``hub_emulator``,
``hub_env`` and ``hub_api`` fixtures.
"""

from __future__ import annotations

from merge_proxy.testing.hub.app import create_app
from merge_proxy.testing.hub.auth import TokenTable, User
from merge_proxy.testing.hub.cards import InvalidCard, derive_tags, parse_card
from merge_proxy.testing.hub.errors import HubError
from merge_proxy.testing.hub.records import Commit, FileEntry, RepoRecord
from merge_proxy.testing.hub.server import DEFAULT_TOKEN, DEFAULT_USER, HubEmulator, serve_forever
from merge_proxy.testing.hub.store import HubStore

__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_USER",
    "Commit",
    "FileEntry",
    "HubEmulator",
    "HubError",
    "HubStore",
    "InvalidCard",
    "RepoRecord",
    "TokenTable",
    "User",
    "create_app",
    "derive_tags",
    "parse_card",
    "serve_forever",
]
