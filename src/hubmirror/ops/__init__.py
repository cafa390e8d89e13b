"""The service layer: one function per action, called alike by the CLI, the admin API and the UI
(DESIGN.md principle 10). Each function that changes state takes the `Actor` doing it and writes
an audit entry naming it and its client. A rule lives here once, not in each face."""

from .actor import Actor
from .audit import list_events
from .durations import parse_duration
from .tokens import (
    NewToken,
    create_token,
    list_tokens,
    revoke_token,
    token_json,
    validate_repo_pattern,
)
from .users import (
    add_to_group,
    add_user,
    change_groups,
    list_groups,
    list_users,
    remove_from_group,
    remove_user,
    user_json,
)

__all__ = [
    "Actor",
    "NewToken",
    "add_to_group",
    "add_user",
    "change_groups",
    "create_token",
    "list_events",
    "list_groups",
    "list_tokens",
    "list_users",
    "parse_duration",
    "remove_from_group",
    "remove_user",
    "revoke_token",
    "token_json",
    "user_json",
    "validate_repo_pattern",
]
