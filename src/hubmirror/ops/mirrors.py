"""Declared mirrors: add (or update), remove, freeze, list, sync now.

The rule that a mirror declared in the config file is changed there, and not from the CLI or
the admin API, lives here once. A mirror counts as declared in the config file when the catalog
says so (the server loaded it) or when the caller names it in `declared` (the config file it
has loaded itself, before any server ran).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ..catalog import Catalog, MirrorRow
from ..catalog.access import looks_like_token
from ..errors import Conflict, InvalidInput, MirrorFrozen, NotFound
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef
from .actor import Actor
from .timefmt import iso

CONFIG = "config"


def _declared_in_config(row: MirrorRow | None, ref: RepoRef, declared: Collection[RepoRef]) -> bool:
    return (row is not None and row.source == CONFIG) or ref in declared


def _where(ref: RepoRef) -> dict[str, str]:
    """The repo in an audit entry's detail. (Mirror declarations keep the repo out of the entry's
    repo columns, which list what happened to the repo's content: syncs, pins, tags, purges.)"""
    return {"repo_type": ref.repo_type.value, "repo_id": ref.repo_id}


def add_mirror(catalog: Catalog, actor: Actor, spec: MirrorSpec, *, source: str = "cli",
               declared: Collection[RepoRef] = ()) -> tuple[MirrorRow, bool]:
    """Declare a mirror, or replace the declaration of one: (its row, True if it is new).
    Conflict if the repo is declared in the config file (change it there)."""
    if looks_like_token(spec.model_dump_json()):
        raise InvalidInput(f"mirror {spec.ref}: a field looks like it holds a token (a declaration is listed and "
                           f"audited; tokens never are)")
    existing = catalog.get_mirror(spec.ref)
    if _declared_in_config(existing, spec.ref, declared):
        raise Conflict(f"{spec.ref} is declared in the config file; change it there")
    catalog.upsert_mirror(spec, source)
    catalog.audit("mirror-add" if existing is None else "mirror-update", None, actor=actor.name,
                  client=actor.client, **_where(spec.ref), spec=spec.model_dump(mode="json"))
    row = catalog.get_mirror(spec.ref)
    assert row is not None
    return row, existing is None


def _declared(catalog: Catalog, ref: RepoRef) -> MirrorRow:
    row = catalog.get_mirror(ref)
    if row is None:
        raise NotFound(f"{ref} is not a declared mirror")
    return row


def remove_mirror(catalog: Catalog, actor: Actor, ref: RepoRef, *, declared: Collection[RepoRef] = ()) -> MirrorRow:
    """Stop following a repo (what was mirrored stays served): the row removed. NotFound if it is
    not a declared mirror, Conflict if it is declared in the config file (remove it there)."""
    row = catalog.get_mirror(ref)
    if row is None and ref not in declared:
        raise NotFound(f"{ref} is not a declared mirror")
    if _declared_in_config(row, ref, declared):
        raise Conflict(f"{ref} is declared in the config file; remove it there")
    assert row is not None
    catalog.remove_mirror(ref)
    catalog.audit("mirror-remove", None, actor=actor.name, client=actor.client, **_where(ref))
    return row


def freeze_mirror(catalog: Catalog, actor: Actor, ref: RepoRef, undo: bool = False, *,
                  declared: Collection[RepoRef] = ()) -> MirrorRow:
    """Freeze a mirror (no more syncs, everything mirrored stays served), or with `undo` sync it
    again on its schedule. NotFound, or Conflict for a mirror of the config file."""
    row = catalog.get_mirror(ref)
    if row is None and ref not in declared:
        raise NotFound(f"{ref} is not a declared mirror")
    if _declared_in_config(row, ref, declared):
        raise Conflict(f"{ref} is declared in the config file; set frozen = {str(not undo).lower()} there")
    assert row is not None
    catalog.upsert_mirror(row.spec.model_copy(update={"frozen": not undo}), row.source)
    catalog.audit("unfreeze" if undo else "freeze", ref, actor=actor.name, client=actor.client,
                  was_frozen=row.spec.frozen)
    return _declared(catalog, ref)


def list_mirrors(catalog: Catalog) -> list[MirrorRow]:
    return catalog.list_mirrors()


def sync_now(catalog: Catalog, actor: Actor, ref: RepoRef, trigger_fn: Callable[[RepoRef, str], Any],
             trigger: str = "api") -> MirrorRow:
    """Queue a check-and-sync of a declared mirror now (`trigger_fn(ref, trigger)`; the server's
    MirrorService.trigger). NotFound if it is not declared, Conflict if it is disabled,
    MirrorFrozen if it is frozen."""
    row = _declared(catalog, ref)
    if not row.spec.enabled:
        raise Conflict(f"mirror {ref} is disabled: declare it again enabled to sync it")
    if row.spec.frozen:
        raise MirrorFrozen(f"mirror {ref} is frozen: it is served as it is and not synced (unfreeze it first)")
    catalog.audit("sync-requested", ref, actor=actor.name, client=actor.client, trigger=trigger)
    trigger_fn(ref, trigger)
    return row


def mirror_json(row: MirrorRow, *, status: bool = False) -> dict[str, Any]:
    """A mirror as `mirror list --json` prints it: its spec (the config file's [[mirrors]] keys) and
    where it was declared; with `status`, when it was last checked and synced and its last error."""
    out: dict[str, Any] = {**row.spec.model_dump(mode="json"), "source": row.source}
    if status:
        out["status"] = {
            "last_check": iso(row.last_check_at), "last_sync": iso(row.last_sync_at),
            "next_sync": iso(row.next_run_at), "upstream": dict(row.upstream),
            "last_error": row.last_error, "last_error_at": iso(row.last_error_at),
        }
    return out
