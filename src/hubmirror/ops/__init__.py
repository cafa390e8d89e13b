"""The service layer: one function per action, called alike by the CLI, the admin API and the UI
(DESIGN.md principle 10). Each function that changes state takes the `Actor` doing it and writes
an audit entry naming it and its client. A rule lives here once, not in each face."""

from .actor import Actor
from .audit import list_events
from .durations import parse_duration
from .gc import run_gc, run_purge
from .mirrors import (
    add_mirror,
    freeze_mirror,
    list_mirrors,
    mirror_json,
    remove_mirror,
    sync_now,
)
from .pins import MAX_NOTE, PinResult, list_pins, missing_files, pin, pin_json, unpin
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
    "MAX_NOTE",
    "Actor",
    "NewToken",
    "PinResult",
    "add_mirror",
    "add_to_group",
    "add_user",
    "change_groups",
    "create_token",
    "freeze_mirror",
    "list_events",
    "list_groups",
    "list_mirrors",
    "list_pins",
    "list_tokens",
    "list_users",
    "mirror_json",
    "missing_files",
    "parse_duration",
    "pin",
    "pin_json",
    "remove_from_group",
    "remove_mirror",
    "remove_user",
    "revoke_token",
    "run_gc",
    "run_purge",
    "sync_now",
    "token_json",
    "unpin",
    "user_json",
    "validate_repo_pattern",
]
