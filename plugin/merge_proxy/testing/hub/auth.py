"""Who is calling, and what they may see and change.

The emulator has no accounts, only a fixed table of tokens given at start-up, because tests need
known credentials and deterministic ownership: a token maps to a user name, a user may write to
its own namespace and to the organisations listed for it, and private repos are visible to exactly
those writers. This is the Hub's rule for personal tokens with write scope, which is what publishing
code uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from merge_proxy.errors import ConfigError
from merge_proxy.testing.hub.errors import Unauthorized

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

#: The Hub's answer to an unknown token, on any endpoint (the client special-cases this message).
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class User:
    """An authenticated caller: its user name and the organisations it may write to."""

    name: str
    orgs: frozenset[str] = field(default_factory=frozenset)

    def can_write(self, namespace: str) -> bool:
        """Whether this user may create, change or delete repos under ``namespace``."""
        return namespace == self.name or namespace in self.orgs


class TokenTable:
    """The tokens the emulator accepts; built once at start-up and never changed while serving."""

    def __init__(self, tokens: Mapping[str, str], orgs: Mapping[str, Iterable[str]] | None = None) -> None:
        if not tokens:
            raise ConfigError("the Hub emulator needs at least one token (a mapping of token to user name)")
        orgs = orgs or {}
        unknown = sorted(set(orgs) - set(tokens.values()))
        if unknown:
            raise ConfigError(f"organisations are given for users that have no token: {', '.join(unknown)}")
        self._users: dict[str, User] = {}
        for token, name in tokens.items():
            _check_name(name, "user name")
            if not token or any(ch.isspace() for ch in token):
                raise ConfigError(f"the token of user '{name}' is empty or contains whitespace")
            user_orgs = frozenset(orgs.get(name, ()))
            for org in user_orgs:
                _check_name(org, "organisation name")
            self._users[token] = User(name=name, orgs=user_orgs)

    def authenticate(self, authorization: str | None) -> User | None:
        """The user behind an ``Authorization: Bearer`` header; None when anonymous.

        An unknown token is an error rather than anonymous access, as on the Hub: silently
        downgrading would hide a misconfigured test behind confusing 404s.
        """
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        user = self._users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise Unauthorized(INVALID_CREDENTIALS)
        return user

    def token_for(self, user_name: str) -> str:
        """The first configured token of ``user_name``, for tests that act as that user."""
        for token, user in self._users.items():
            if user.name == user_name:
                return token
        raise KeyError(f"no token is configured for user '{user_name}'")

    @property
    def first_token(self) -> str:
        """The token listed first at start-up: the emulator's default identity."""
        return next(iter(self._users))


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid {what} '{name}': use letters, digits, '.', '_' or '-' (at most 96 characters)"
        )
