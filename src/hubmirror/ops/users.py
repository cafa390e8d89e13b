"""Users and their groups. Every change is audited with its actor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..catalog import Catalog
from ..catalog.access import UserRow, valid_name
from ..errors import InvalidInput, NotFound
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


def change_groups(catalog: Catalog, actor: Actor, user: str, add: Iterable[str] = (),
                  remove: Iterable[str] = ()) -> list[dict[str, str]]:
    """Put `user` in the groups `add` and out of those in `remove`, after checking every name and
    that the user exists (a bad name changes nothing). One {group, change} per group named:
    change is added, already a member, removed or not a member."""
    add, remove = list(add), list(remove)
    if not add and not remove:
        raise InvalidInput("nothing to change: name a group to add the user to (--add) or remove it from (--remove)")
    for g in (*add, *remove):
        valid_name(g, "group")
    if catalog.get_user(valid_name(user, "user")) is None:
        raise NotFound(f"no user named {user!r} (hubmirror user list shows them)")
    out = [{"group": g, "change": "added" if add_to_group(catalog, actor, user, g) else "already a member"}
           for g in add]
    out += [{"group": g, "change": "removed" if remove_from_group(catalog, actor, user, g) else "not a member"}
            for g in remove]
    return out


def list_groups(catalog: Catalog) -> dict[str, list[str]]:
    """Every group with its members."""
    return catalog.list_groups()


def user_json(row: UserRow) -> dict[str, Any]:
    return {"name": row.name, "groups": list(row.groups), "created_at": iso(row.created_at)}
