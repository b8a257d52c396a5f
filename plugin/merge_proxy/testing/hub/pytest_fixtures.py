"""pytest fixtures for code that talks to the Hugging Face Hub.

Enable them in a test module or conftest with::

    pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]

``huggingface_hub`` reads ``HF_ENDPOINT`` once, when it is imported, and a test session usually
imports it long before any fixture runs. The fixtures therefore offer the two ways that do not
depend on import order: ``hub_env`` sets the environment for client *subprocesses* (the faithful
setup: an unmodified client configured only through ``HF_ENDPOINT``), and ``hub_api`` is an
in-process ``HfApi`` given the endpoint and token explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from merge_proxy.testing.hub.server import HubEmulator

if TYPE_CHECKING:
    from huggingface_hub import HfApi


@pytest.fixture
def hub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubEmulator]:
    """A running emulator with one user, ``tester``, whose token is ``hub_emulator.token``; fresh per test."""
    with HubEmulator(tmp_path_factory.mktemp("hub-data")) as emulator:
        yield emulator


@pytest.fixture
def hub_env(
    hub_emulator: HubEmulator, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """``os.environ`` pointed at the emulator (with the default token and a private ``HF_HOME``).

    Subprocesses started by the test inherit it; so does ``huggingface_hub`` if it is first
    imported after this fixture ran. Returns the variables that were set.
    """
    env = hub_emulator.client_env(hf_home=tmp_path_factory.mktemp("hf-home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def hub_api(hub_emulator: HubEmulator) -> HfApi:
    """An in-process ``HfApi`` bound to the emulator through explicit ``endpoint`` and ``token``.

    Module-level helpers (``hf_hub_download``, ``snapshot_download``) need ``endpoint=`` as well;
    ``ModelCard.load`` has no such argument, so card tests should use ``hub_env`` and a subprocess.
    """
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_emulator.endpoint, token=hub_emulator.token)
