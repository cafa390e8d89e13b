"""Catalog queries for users, groups and tokens (mixed into Catalog).

A token is stored only as the sha256 of its plaintext (model/access.py `token_hash`); no row
returned here to be printed carries the hash. Datetimes are naive UTC, as every column stores them.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..errors import Conflict, InvalidInput, NotFound
from ..model.access import Role, validate_name
from . import schema as t
from .engine import insert, write
from .schema import utcnow

_HASH_CHARS = frozenset("0123456789abcdef")
# a token of ours or of the Hub's somewhere in a string (someone pasted one into the wrong argument)
_TOKENISH = re.compile(r"(?<![A-Za-z0-9])(hm_[A-Za-z0-9_-]{20,}|(hf|api_org)_[A-Za-z0-9]{10,})")


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    name: str
    groups: tuple[str, ...]  # sorted
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token as listed: everything but its hash."""

    id: int
    name: str
    user: str
    role: Role
    repos: tuple[str, ...] | None  # the repo patterns it is limited to; None: not limited
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """active | expired | revoked"""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the server needs to know about the token a request presents (see `token_by_hash`)."""

    id: int
    name: str  # the token's name
    user: str
    groups: frozenset[str]
    role: Role
    repos: tuple[str, ...] | None
    expires_at: datetime | None  # naive UTC
    revoked_at: datetime | None

    def usable(self, now: datetime | None = None) -> bool:
        """Neither revoked nor expired at `now` (naive or aware UTC; default: the catalog's clock)."""
        if self.revoked_at is not None:
            return False
        if self.expires_at is None:
            return True
        if now is None:
            now = utcnow()
        elif now.tzinfo is not None:
            now = now.astimezone(timezone.utc).replace(tzinfo=None)
        return now < self.expires_at


def looks_like_token(value: object) -> bool:
    return isinstance(value, str) and bool(_TOKENISH.search(value))


def quoted(value: object, limit: int = 80) -> str:
    """A value someone gave, for an error message: cut to `limit`, and never a token."""
    if looks_like_token(value):
        return "(a value that looks like a token, not shown)"
    return repr(str(value)[:limit])


def valid_name(name: str, what: str) -> str:
    """validate_name, and never a string that holds a token: a name is stored, listed and audited."""
    if looks_like_token(name):
        raise InvalidInput(f"invalid {what} name: it looks like a token (names are printed and logged; "
                           f"tokens never are)")
    return validate_name(name, what)


def parse_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput(f"invalid role {quoted(role, 20)}: use read, write or admin") from None


def _repos(raw: str | None) -> tuple[str, ...] | None:
    return None if raw is None else tuple(json.loads(raw))


class AccessQueries:
    engine: sa.Engine

    # -- users and groups -------------------------------------------------------------------

    def _user_id(self, c: sa.Connection, name: str) -> int:
        uid = c.execute(sa.select(t.users.c.id).where(t.users.c.name == name)).scalar()
        if uid is None:
            raise NotFound(f"no user named {name!r} (hubmirror user list shows them)")
        return int(uid)

    @staticmethod
    def _groups_of(c: sa.Connection, uids: Sequence[int] | None = None) -> dict[int, list[str]]:
        q = sa.select(t.group_members.c.user, t.group_members.c.group).order_by(t.group_members.c.group)
        if uids is not None:
            q = q.where(t.group_members.c.user.in_(uids))
        out: dict[int, list[str]] = {}
        for r in c.execute(q).all():
            out.setdefault(r.user, []).append(r.group)
        return out

    def add_user(self, name: str, groups: Iterable[str] = ()) -> UserRow:
        """Create a user, in `groups`; Conflict if the name is taken."""
        valid_name(name, "user")
        wanted = sorted({valid_name(g, "group") for g in groups})
        now = utcnow()
        try:
            with write(self.engine) as c:
                if c.execute(sa.select(t.users.c.id).where(t.users.c.name == name)).first():
                    raise Conflict(f"a user named {name!r} exists already")
                res = c.execute(sa.insert(t.users).values(name=name, created_at=now))
                uid = res.inserted_primary_key[0]  # type: ignore[index]
                if wanted:
                    c.execute(sa.insert(t.group_members), [{"user": uid, "group": g} for g in wanted])
        except sa.exc.IntegrityError:
            raise Conflict(f"a user named {name!r} exists already") from None
        return UserRow(int(uid), name, tuple(wanted), now)

    def get_user(self, name: str) -> UserRow | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.users).where(t.users.c.name == name)).first()
            if r is None:
                return None
            return UserRow(r.id, r.name, tuple(self._groups_of(c, [r.id]).get(r.id, [])), r.created_at)

    def list_users(self) -> list[UserRow]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.users).order_by(t.users.c.name)).all()
            groups = self._groups_of(c)
        return [UserRow(r.id, r.name, tuple(groups.get(r.id, [])), r.created_at) for r in rows]

    def remove_user(self, name: str) -> list[str]:
        """Delete a user, its group memberships and its tokens (which stop working at once).
        Returns the names of the tokens deleted; NotFound if there is no such user."""
        with write(self.engine) as c:
            uid = self._user_id(c, name)
            names = [r.name for r in c.execute(
                sa.select(t.tokens.c.name).where(t.tokens.c.user == uid).order_by(t.tokens.c.name)).all()]
            # explicit, not only ON DELETE CASCADE: a connection without foreign keys on must not keep them
            c.execute(sa.delete(t.tokens).where(t.tokens.c.user == uid))
            c.execute(sa.delete(t.group_members).where(t.group_members.c.user == uid))
            c.execute(sa.delete(t.users).where(t.users.c.id == uid))
        return names

    def add_to_group(self, user: str, group: str) -> bool:
        """False if the user was in the group already."""
        valid_name(group, "group")
        try:
            with write(self.engine) as c:
                uid = self._user_id(c, user)
                # added concurrently: nothing to do
                return bool(c.execute(insert(c, t.group_members).values(user=uid, group=group)
                                      .on_conflict_do_nothing(index_elements=["user", "group"])).rowcount)
        except sa.exc.IntegrityError:  # the user was removed meanwhile
            raise NotFound(f"no user named {user!r} (hubmirror user list shows them)") from None

    def remove_from_group(self, user: str, group: str) -> bool:
        """False if the user was not in the group."""
        valid_name(group, "group")
        with write(self.engine) as c:
            uid = self._user_id(c, user)
            return bool(c.execute(sa.delete(t.group_members).where(
                t.group_members.c.user == uid, t.group_members.c.group == group)).rowcount)

    def list_groups(self) -> dict[str, list[str]]:
        """Every group with its members (a group exists while it has members), both sorted."""
        q = (sa.select(t.group_members.c.group, t.users.c.name)
             .join(t.users, t.users.c.id == t.group_members.c.user)
             .order_by(t.group_members.c.group, t.users.c.name))
        out: dict[str, list[str]] = {}
        with self.engine.connect() as c:
            for r in c.execute(q).all():
                out.setdefault(r.group, []).append(r.name)
        return out

    # -- tokens -----------------------------------------------------------------------------

    @staticmethod
    def _token_row(r: Any) -> TokenRow:
        return TokenRow(id=r.id, name=r.name, user=r.user_name, role=Role(r.role), repos=_repos(r.repos),
                        created_at=r.created_at, expires_at=r.expires_at, revoked_at=r.revoked_at,
                        last_used_at=r.last_used_at)

    @staticmethod
    def _token_select() -> sa.Select[Any]:
        k = t.tokens.c
        return (sa.select(k.id, k.name, t.users.c.name.label("user_name"), k.role, k.repos, k.created_at,
                          k.expires_at, k.revoked_at, k.last_used_at)
                .join(t.users, t.users.c.id == k.user))

    def add_token(self, name: str, user: str, hash: str, role: Role | str, repos: Sequence[str] | None,
                  expires_at: datetime | None) -> TokenRow:
        """Record a token by the sha256 hex of its plaintext. Conflict if the name is taken, NotFound
        if the user is."""
        valid_name(name, "token")
        role = parse_role(role)
        if not isinstance(hash, str) or len(hash) != 64 or not set(hash) <= _HASH_CHARS:
            raise InvalidInput("a token is recorded by the lowercase sha256 hex of its plaintext")
        if repos is not None:
            repos = list(repos)
            if not repos or not all(isinstance(p, str) and p for p in repos):
                raise InvalidInput("repos: name at least one repo pattern, or none at all (not limited)")
        if expires_at is not None and expires_at.tzinfo is not None:
            expires_at = expires_at.astimezone(timezone.utc).replace(tzinfo=None)
        now = utcnow()
        try:
            with write(self.engine) as c:
                uid = self._user_id(c, user)
                if c.execute(sa.select(t.tokens.c.id).where(t.tokens.c.name == name)).first():
                    raise Conflict(f"a token named {name!r} exists already")
                tid = c.execute(sa.insert(t.tokens).values(
                    name=name, user=uid, hash=hash, role=role.value,
                    repos=None if repos is None else json.dumps(repos), created_at=now, expires_at=expires_at,
                )).inserted_primary_key[0]  # type: ignore[index]
        except sa.exc.IntegrityError:
            # the name, raced; or (never in practice, 256 random bits) the hash: the message says neither
            raise Conflict(f"the token {name!r} could not be recorded: its name or value is taken; "
                           f"create it again") from None
        return TokenRow(int(tid), name, user, role, None if repos is None else tuple(repos), now, expires_at,
                        None, None)

    def get_token(self, name: str) -> TokenRow | None:
        with self.engine.connect() as c:
            r = c.execute(self._token_select().where(t.tokens.c.name == name)).first()
        return self._token_row(r) if r else None

    def list_tokens(self, user: str | None = None) -> list[TokenRow]:
        q = self._token_select().order_by(t.tokens.c.name)
        if user is not None:
            q = q.where(t.users.c.name == user)
        with self.engine.connect() as c:
            return [self._token_row(r) for r in c.execute(q).all()]

    def revoke_token(self, name: str) -> tuple[TokenRow, bool]:
        """Revoke a token now: (its row, True), or (its row, False) if it was revoked already.
        NotFound if there is no such token."""
        with write(self.engine) as c:
            n = c.execute(sa.update(t.tokens).where(t.tokens.c.name == name, t.tokens.c.revoked_at.is_(None))
                          .values(revoked_at=utcnow())).rowcount
            r = c.execute(self._token_select().where(t.tokens.c.name == name)).first()
        if r is None:
            raise NotFound(f"no token named {name!r} (hubmirror token list shows them)")
        return self._token_row(r), bool(n)

    def token_by_hash(self, hash: str) -> TokenRecord | None:
        """The token whose plaintext hashes to `hash`, revoked and expired ones included (ask
        `usable()`), with its user's groups; None if there is none."""
        k = t.tokens.c
        q = (sa.select(k.id, k.name, k.hash, k.role, k.repos, k.expires_at, k.revoked_at, k.user,
                       t.users.c.name.label("user_name"))
             .join(t.users, t.users.c.id == k.user).where(k.hash == hash))
        with self.engine.connect() as c:
            r = c.execute(q).first()
            if r is None or not hmac.compare_digest(str(r.hash), str(hash)):
                return None
            groups = frozenset(self._groups_of(c, [r.user]).get(r.user, []))
        return TokenRecord(id=r.id, name=r.name, user=r.user_name, groups=groups, role=Role(r.role),
                           repos=_repos(r.repos), expires_at=r.expires_at, revoked_at=r.revoked_at)

    def touch_tokens(self, used: Mapping[int, datetime]) -> None:
        """Record when tokens were last used ({token id: when}, batched by the server); a time never
        moves backwards."""
        if not used:
            return
        rows = []
        for tid, when in used.items():
            if when.tzinfo is not None:
                when = when.astimezone(timezone.utc).replace(tzinfo=None)
            rows.append({"tid": tid, "when": when})
        k = t.tokens.c
        stmt = (sa.update(t.tokens)
                .where(k.id == sa.bindparam("tid"),
                       sa.or_(k.last_used_at.is_(None), k.last_used_at < sa.bindparam("when")))
                .values(last_used_at=sa.bindparam("when")))
        with write(self.engine) as c:
            c.execute(stmt, rows)
