"""Who is asking, and the grammar of what they may do: roles, tokens, user and group names,
policy subjects. (The decisions themselves live in serve/policy.py.)"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from ..errors import InvalidInput


class Role(str, Enum):
    READ = "read"  # read what the policy allows
    WRITE = "write"  # and write what it allows
    ADMIN = "admin"  # everything, and the admin API

    def allows(self, needed: Role) -> bool:
        order = (Role.READ, Role.WRITE, Role.ADMIN)
        return order.index(self) >= order.index(needed)


TOKEN_PREFIX = "hm_"
_TOKEN_RE = re.compile(r"^hm_[A-Za-z0-9_-]{43}\Z")  # 32 random bytes, base64url without padding
_FOREIGN_RE = re.compile(r"^(hf|api_org)_[A-Za-z0-9]{10,200}\Z")  # a Hugging Face token: not ours
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def new_token() -> str:
    """256 random bits, shown once and stored only as `token_hash`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_token(value: str) -> bool:
    return bool(_TOKEN_RE.match(value))


def is_foreign_token(value: str) -> bool:
    """A Hugging Face token (`hf_...`): clients logged in to the Hub send it to any HF_ENDPOINT.
    It grants nothing here, is never stored or forwarded, and the request counts as anonymous."""
    return bool(_FOREIGN_RE.match(value))


def token_hash(token: str) -> str:
    """Tokens are 256 random bits: one sha256 is as good as a slow KDF against guessing, and a
    lookup by it leaks nothing an attacker could use."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def validate_name(name: str, what: str) -> str:
    """A user, group or token name: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(f"invalid {what} name {str(name)[:80]!r}: 1-64 characters of A-Z a-z 0-9 . _ -, "
                           f"starting with a letter or a digit")
    return name


@dataclass(frozen=True, slots=True)
class Principal:
    """Whoever sent a request: anonymous (user None) or the owner of a valid token."""

    client: str = "-"  # the client's address (behind trusted proxies, the forwarded one)
    user: str | None = None
    groups: frozenset[str] = field(default_factory=frozenset)
    role: Role | None = None
    token: str | None = None  # the token's name (never the token)
    token_repos: tuple[str, ...] | None = None  # the token is limited to these repo patterns
    expires_at: datetime | None = None

    @property
    def anonymous(self) -> bool:
        return self.user is None

    @property
    def actor(self) -> str:
        """How the audit log names it."""
        return f"user:{self.user} (token {self.token})" if self.user else "anonymous"


ANONYMOUS = Principal()
SUBJECT_RE = re.compile(r"^(anyone|authenticated|user:[A-Za-z0-9][A-Za-z0-9._-]{0,63}|group:[A-Za-z0-9][A-Za-z0-9._-]{0,63})\Z")


def validate_subject(subject: str) -> str:
    if not isinstance(subject, str) or not SUBJECT_RE.match(subject):
        raise ValueError(f"invalid subject {str(subject)[:80]!r}: use anyone, authenticated, user:NAME or group:NAME")
    return subject


def upstream_gated(v: object) -> str | None:
    """The Hub's `gated` field (false, "auto" or "manual") as the catalog keeps it."""
    if not v:
        return None
    return v[:16] if isinstance(v, str) else "true"
