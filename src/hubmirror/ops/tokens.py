"""Tokens: created with 256 random bits, shown once, stored only as their sha256.

Nothing here puts a token or its hash in the audit log, a log line or an error message: a
`NewToken` does not even show its token in its repr.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..catalog import Catalog
from ..catalog.access import TokenRow, looks_like_token, parse_role, quoted, valid_name
from ..catalog.schema import utcnow
from ..errors import InvalidInput
from ..model.access import Role, new_token, token_hash
from .actor import Actor
from .durations import MAX_DURATION
from .timefmt import iso

MAX_PATTERNS = 100
_PATTERN_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f]")  # no whitespace or control characters


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: `token` is its plaintext, to show once and never again."""

    token: str = field(repr=False)
    info: TokenRow

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, **token_json(self.info)}


def validate_repo_pattern(pattern: str) -> str:
    """The grammar of the proxy rules: a case-insensitive glob over `repo_id` or
    `{models|datasets|spaces}/repo_id` (`acme/*`, `datasets/acme/*`), or a regex `re:...`."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInput("invalid repo pattern '': use a glob such as acme/* or datasets/acme/*, or re:REGEX")
    if len(pattern) > 300 or _PATTERN_CHARS.search(pattern):
        raise InvalidInput(f"invalid repo pattern {quoted(pattern)}: at most 300 characters, without spaces or "
                           f"control characters")
    if looks_like_token(pattern):
        raise InvalidInput(f"invalid repo pattern {quoted(pattern)}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise InvalidInput(f"invalid repo pattern {pattern!r}: not a regular expression ({e})") from None
    return pattern


def _patterns(repos: Sequence[str] | None) -> list[str] | None:
    if repos is None:
        return None
    if isinstance(repos, str):
        repos = [repos]
    out = list(dict.fromkeys(validate_repo_pattern(p) for p in repos))
    if not out:
        raise InvalidInput("repos: name at least one repo pattern, or none at all (the token is not limited)")
    if len(out) > MAX_PATTERNS:
        raise InvalidInput(f"repos: at most {MAX_PATTERNS} patterns per token")
    return out


def create_token(catalog: Catalog, actor: Actor, name: str, user: str, role: Role | str = "read",
                 expires: timedelta | None = None, repos: Sequence[str] | None = None) -> NewToken:
    """Create a token for `user`; the answer holds its plaintext, which is stored nowhere.
    InvalidInput for a bad name, role, expiry or pattern; NotFound for a missing user; Conflict
    for a name in use."""
    valid_name(name, "token")
    valid_name(user, "user")
    r = parse_role(role)
    patterns = _patterns(repos)
    expires_at: datetime | None = None
    if expires is not None:
        if not timedelta(0) < expires <= MAX_DURATION:
            raise InvalidInput("invalid expiry: it must be more than 0 and at most 100 years")
        expires_at = utcnow() + expires
    token = new_token()
    row = catalog.add_token(name, user, token_hash(token), r, patterns, expires_at)
    catalog.audit("token-create", None, actor=actor.name, client=actor.client, name=row.name, user=row.user,
                  role=row.role.value, repos=None if row.repos is None else list(row.repos),
                  expires_at=iso(row.expires_at))
    return NewToken(token, row)


def list_tokens(catalog: Catalog, user: str | None = None) -> list[TokenRow]:
    """Every token (of `user`), without its hash."""
    return catalog.list_tokens(user)


def revoke_token(catalog: Catalog, actor: Actor, name: str) -> tuple[TokenRow, bool]:
    """Revoke a token at once: (its row, True), or (its row, False) if it was revoked already
    (nothing audited then). NotFound if there is no such token."""
    row, changed = catalog.revoke_token(name)
    if changed:
        catalog.audit("token-revoke", None, actor=actor.name, client=actor.client, name=row.name, user=row.user)
    return row, changed


def token_json(row: TokenRow, now: datetime | None = None) -> dict[str, Any]:
    """A token as listed: never its value or its hash."""
    return {
        "name": row.name, "user": row.user, "role": row.role.value,
        "repos": None if row.repos is None else list(row.repos), "state": row.state(now),
        "created_at": iso(row.created_at), "expires_at": iso(row.expires_at),
        "revoked_at": iso(row.revoked_at), "last_used_at": iso(row.last_used_at),
    }
