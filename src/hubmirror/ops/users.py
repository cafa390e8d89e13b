"""Users and their groups. Every change is audited with its actor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..catalog import Catalog
from ..catalog.access import UserRow
from .actor import Actor
from .timefmt import iso


def add_user(catalog: Catalog, actor: Actor, name: str, groups: Iterable[str] = ()) -> UserRow:
    """Create a user in `groups`. InvalidInput for a bad name, Conflict if it exists."""
    row = catalog.add_user(name, groups)
    catalog.audit("user-add", None, actor=actor.name, client=actor.client, user=row.name, groups=list(row.groups))
    return row


def remove_user(catalog: Catalog, actor: Actor, name: str) -> list[str]:
    """Delete a user with its group memberships and its tokens, which stop working at once.
    Returns the names of those tokens; NotFound if there is no such user."""
    tokens = catalog.remove_user(name)
    catalog.audit("user-remove", None, actor=actor.name, client=actor.client, user=name, tokens_deleted=tokens)
    return tokens


def list_users(catalog: Catalog) -> list[UserRow]:
    return catalog.list_users()


def add_to_group(catalog: Catalog, actor: Actor, user: str, group: str) -> bool:
    """False (and nothing audited) if the user was in the group already."""
    added = catalog.add_to_group(user, group)
    if added:
        catalog.audit("group-add", None, actor=actor.name, client=actor.client, user=user, group=group)
    return added


def remove_from_group(catalog: Catalog, actor: Actor, user: str, group: str) -> bool:
    """False (and nothing audited) if the user was not in the group."""
    removed = catalog.remove_from_group(user, group)
    if removed:
        catalog.audit("group-remove", None, actor=actor.name, client=actor.client, user=user, group=group)
    return removed


def list_groups(catalog: Catalog) -> dict[str, list[str]]:
    """Every group with its members."""
    return catalog.list_groups()


def user_json(row: UserRow) -> dict[str, Any]:
    return {"name": row.name, "groups": list(row.groups), "created_at": iso(row.created_at)}
