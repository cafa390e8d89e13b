"""The admin HTTP API: users, groups, tokens, mirrors, pins, gc and the audit log, as JSON.

Every route calls the same ops/ function as the CLI (DESIGN.md principle 10) with the actor
`user:NAME (token T)` and the client's address, so each change is audited as the CLI's are.

Access: the request's principal must hold an `admin` token and come from an address in
`access.admin_allow_ips` (default: loopback). Without a token: 401 "Invalid user token."; with
a token of another role, or from another address: 403. Every refusal is audited as
`admin-denied` (actor, client, method, path, reason; never a header or a token).

Bodies are JSON objects (`Content-Type: application/json`) of at most 1 MiB; every field is
checked, unknown ones are refused, and a bad one is a 400 naming it (413 for a larger body).
An empty body counts as `{}` where every field is optional.

Routes (all under /api/admin; {type} is models, datasets or spaces; {repo_id} is one or two
segments):

  GET    /users                                 -> 200 [{name, groups, created_at}]
  POST   /users         {name, groups?: [..]}   -> 201 {status: created, name, groups, created_at}
  DELETE /users/{name}                          -> 200 {status: removed, name, tokens_deleted}
                                                   (its tokens stop working at once)
  POST   /users/{name}/groups {add?: [..], remove?: [..]}
                                                -> 200 {status: updated, name, groups, changes}
  GET    /groups                                -> 200 {group: [member, ...]}
  GET    /tokens[?user=NAME]                    -> 200 [token without its value or hash]
  POST   /tokens        {name, user, role?: read|write|admin, expires?: "90d"|null,
                         repos?: [pattern]|null}
                                                -> 201 {status: created, token, name, user, role, ...}
                                                   (the only answer that ever holds the token)
  DELETE /tokens/{name}                         -> 200 {status: revoked|already revoked, ...}
                                                   (stops working at once in this process)
  GET    /mirrors                               -> 200 [{...spec, source, status}]
  POST   /mirrors       {repo, type?, revisions?, include?, exclude?, schedule?, enabled?,
                         frozen?, keep_last?, keep_tags?, allow_gated?} (a [[mirrors]] table)
                                                -> 201 {status: created, ...} | 200 {status: updated, ...}
  DELETE /mirrors/{type}/{repo_id}              -> 200 {status: removed, ...spec, source}
  POST   /mirrors/{type}/{repo_id}/freeze {undo?: false}
                                                -> 200 {status: frozen|unfrozen, ...spec, source}
  POST   /mirrors/{type}/{repo_id}/sync         -> 202 {status: queued, repo_id, repo_type}
  GET    /pins                                  -> 200 [{repo_type, repo_id, commit, revision, note, created_at}]
  POST   /pins          {repo, type?: model, revision?: main, note?: ""}
                                                -> 201 {status: pinned, repo_id, repo_type, revision, commit,
                                                   created, missing_files, fetching} (missing files are
                                                   fetched in the background; `pin-complete` is audited)
  DELETE /pins/{type}/{repo_id}/{revision or commit}
                                                -> 200 {status: unpinned, repo_id, repo_type, commit}
  POST   /gc            {dry_run?: false}       -> 200 {dry_run, commits_removed, blobs_deleted, bytes_freed}
  GET    /audit[?since=1d][&limit=100]          -> 200 [{time, action, actor, client, repo_type, repo_id,
                                                   repo, detail}] (oldest first, limit at most 10000)

Conflicts (a mirror declared in the config file, a name in use) are 409, missing things 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from pydantic import ValidationError

from .. import ops
from ..catalog import Catalog
from ..catalog.access import looks_like_token, quoted
from ..errors import (
    Forbidden,
    HubMirrorError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from ..model.access import Principal, Role
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef, RepoType, validate_repo_id
from ..store import BlobStore
from ..sync.engine import Syncer
from ..sync.service import MirrorService
from .auth import Authenticator
from .http import json_response, raw_path, redact
from .hub import PRINCIPAL
from .routing import decode_segment, repo_from_segments

log = logging.getLogger("hubmirror.admin")

MAX_BODY = 1 << 20
MAX_LIST = 100  # groups, repo patterns per request
MAX_AUDIT = 10_000
TYPES = ("models", "datasets", "spaces")
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[], Awaitable[web.StreamResponse]]


def is_admin_path(path: str) -> bool:
    return path == "/api/admin" or path.startswith("/api/admin/")


class AdminApi:
    def __init__(self, catalog: Catalog, store: BlobStore, data: Path, *, auth: Authenticator,
                 admin_address: Callable[[web.Request], bool], mirrors: MirrorService, syncer: Syncer,
                 config_mirrors: Collection[MirrorSpec] = ()) -> None:
        self.catalog = catalog
        self.store = store
        self.data = data
        self.auth = auth
        self.admin_address = admin_address
        self.mirrors = mirrors
        self.syncer = syncer
        self.config_mirrors = list(config_mirrors)
        self.declared = {m.ref for m in config_mirrors}
        self._fills: dict[tuple[RepoRef, str], asyncio.Task[None]] = {}

    async def close(self) -> None:
        tasks = list(self._fills.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- access -----------------------------------------------------------------------------

    async def refused(self, request: web.Request, who: Principal | None, reason: str) -> None:
        """Audit a refused admin call (also called by the gate's middleware for a bad token)."""
        if who is None:
            who = Principal(client=self.auth.trust.client_address(request))
        path = redact(raw_path(request))[:300]
        if looks_like_token(path):
            path = "(a path that looks like it holds a token, not shown)"
        try:
            await asyncio.to_thread(self.catalog.audit, "admin-denied", None, actor=who.actor, client=who.client,
                                    method=request.method[:20], path=path, reason=reason)
        except HubMirrorError as e:  # e.g. a full disk: the refusal stands
            log.warning("could not audit a refused admin call: %s", e.message)

    async def _admit(self, request: web.Request) -> Principal:
        who: Principal = request.get(PRINCIPAL) or Principal(client=self.auth.trust.client_address(request))
        if who.anonymous:
            await self.refused(request, who, "no token")
            raise Unauthorized("Invalid user token.")
        if not self.admin_address(request):
            await self.refused(request, who, "address not in access.admin_allow_ips")
            raise Forbidden("the admin API is not open to this address (access.admin_allow_ips)")
        if who.role is not Role.ADMIN:
            await self.refused(request, who, f"token role {(who.role or Role.READ).value}")
            raise Forbidden("the admin API needs a token with the admin role")
        return who

    # -- dispatch ---------------------------------------------------------------------------

    async def dispatch(self, request: web.Request, segs: list[str]) -> web.StreamResponse:
        """segs: the raw path segments after /api/ (segs[0] == "admin")."""
        who = await self._admit(request)
        actor = ops.Actor.of(who)
        path = segs[1:]
        head, rest = (path[0], path[1:]) if path else ("", [])
        m = request.method
        if head == "users":
            if not rest:
                return await _pick(m, {"GET": lambda: self.list_users(request),
                                       "POST": lambda: self.add_user(request, actor)})
            name = decode_segment(rest[0], "user name")
            if len(rest) == 1:
                return await _pick(m, {"DELETE": lambda: self.remove_user(request, actor, name)})
            if rest[1:] == ["groups"]:
                return await _pick(m, {"POST": lambda: self.change_groups(request, actor, name)})
        elif head == "groups" and not rest:
            return await _pick(m, {"GET": lambda: self.list_groups(request)})
        elif head == "tokens":
            if not rest:
                return await _pick(m, {"GET": lambda: self.list_tokens(request),
                                       "POST": lambda: self.create_token(request, actor)})
            if len(rest) == 1:
                name = decode_segment(rest[0], "token name")
                return await _pick(m, {"DELETE": lambda: self.revoke_token(request, actor, name)})
        elif head == "mirrors":
            if not rest:
                return await _pick(m, {"GET": lambda: self.list_mirrors(request),
                                       "POST": lambda: self.add_mirror(request, actor)})
            if m == "DELETE":
                ref = _repo(rest)
                return await self.remove_mirror(request, actor, ref)
            if len(rest) >= 3 and rest[-1] in ("freeze", "sync"):
                ref = _repo(rest[:-1])
                action = self.freeze_mirror if rest[-1] == "freeze" else self.sync_mirror
                return await _pick(m, {"POST": lambda: action(request, actor, ref)})
            _repo(rest)  # a bad repo id is a 400 naming it; a good one, a wrong method
            raise web.HTTPMethodNotAllowed(m, ["DELETE"])
        elif head == "pins":
            if not rest:
                return await _pick(m, {"GET": lambda: self.list_pins(request),
                                       "POST": lambda: self.add_pin(request, actor)})
            if len(rest) >= 3:
                ref = _repo(rest[:-1])
                rev = decode_segment(rest[-1], "revision")
                return await _pick(m, {"DELETE": lambda: self.remove_pin(request, actor, ref, rev)})
        elif head == "gc" and not rest:
            return await _pick(m, {"POST": lambda: self.gc(request, actor)})
        elif head == "audit" and not rest:
            return await _pick(m, {"GET": lambda: self.audit(request)})
        raise NotFound(f"no such admin route: {redact(raw_path(request))[:200]}")

    # -- users and groups -------------------------------------------------------------------

    async def list_users(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        rows = await asyncio.to_thread(ops.list_users, self.catalog)
        return json_response([ops.user_json(u) for u in rows])

    async def add_user(self, request: web.Request, actor: ops.Actor) -> web.StreamResponse:
        doc = _Fields(await _body(request), ("name", "groups"))
        name, groups = doc.string("name"), doc.strings("groups")
        row = await asyncio.to_thread(ops.add_user, self.catalog, actor, name, groups)
        return json_response({"status": "created", **ops.user_json(row)}, status=201)

    async def remove_user(self, request: web.Request, actor: ops.Actor, name: str) -> web.StreamResponse:
        await _no_body(request)
        tokens = await asyncio.to_thread(ops.remove_user, self.catalog, actor, name)
        self.auth.forget()
        return json_response({"status": "removed", "name": name, "tokens_deleted": tokens})

    async def change_groups(self, request: web.Request, actor: ops.Actor, name: str) -> web.StreamResponse:
        doc = _Fields(await _body(request), ("add", "remove"))
        add, remove = doc.strings("add"), doc.strings("remove")
        if not add and not remove:
            raise InvalidInput('nothing to change: name a group in "add" or "remove"')
        changes = await asyncio.to_thread(ops.change_groups, self.catalog, actor, name, add, remove)
        self.auth.forget()  # a token's groups are cached with it
        row = await asyncio.to_thread(self.catalog.get_user, name)
        return json_response({"status": "updated", "name": name, "groups": list(row.groups) if row else [],
                              "changes": changes})

    async def list_groups(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        return json_response(await asyncio.to_thread(ops.list_groups, self.catalog))

    # -- tokens -----------------------------------------------------------------------------

    async def list_tokens(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("user",))
        rows = await asyncio.to_thread(ops.list_tokens, self.catalog, q.get("user"))
        return json_response([ops.token_json(t) for t in rows])

    async def create_token(self, request: web.Request, actor: ops.Actor) -> web.StreamResponse:
        doc = _Fields(await _body(request), ("name", "user", "role", "expires", "repos"))
        name, user = doc.string("name"), doc.string("user")
        role = doc.string("role", default="read")
        expires = doc.string("expires", default=None, nullable=True)
        repos = doc.strings("repos", nullable=True)
        lifetime = ops.parse_duration(expires, "expires") if expires is not None else None
        new = await asyncio.to_thread(ops.create_token, self.catalog, actor, name, user, role, lifetime, repos)
        return json_response({"status": "created", **new.to_json()}, status=201, headers=NO_STORE)

    async def revoke_token(self, request: web.Request, actor: ops.Actor, name: str) -> web.StreamResponse:
        await _no_body(request)
        row, changed = await asyncio.to_thread(ops.revoke_token, self.catalog, actor, name)
        self.auth.forget()  # it stops working now, not when the cache entry runs out
        return json_response({"status": "revoked" if changed else "already revoked", **ops.token_json(row)})

    # -- mirrors ----------------------------------------------------------------------------

    async def list_mirrors(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        rows = await asyncio.to_thread(ops.list_mirrors, self.catalog)
        return json_response([ops.mirror_json(m, status=True) for m in rows])

    async def add_mirror(self, request: web.Request, actor: ops.Actor) -> web.StreamResponse:
        doc = await _body(request)
        if not doc:
            raise InvalidInput('missing field "repo": a mirror is a [[mirrors]] table of the config file as JSON')
        try:
            spec = MirrorSpec.model_validate_json(orjson.dumps(doc), strict=True)
        except ValidationError as e:
            raise InvalidInput("; ".join(_pydantic_error(err) for err in e.errors()[:10])) from None
        row, created = await asyncio.to_thread(ops.add_mirror, self.catalog, actor, spec, source="api",
                                               declared=self.declared)
        return json_response({"status": "created" if created else "updated", **ops.mirror_json(row)},
                             status=201 if created else 200)

    async def remove_mirror(self, request: web.Request, actor: ops.Actor, ref: RepoRef) -> web.StreamResponse:
        await _no_body(request)
        row = await asyncio.to_thread(ops.remove_mirror, self.catalog, actor, ref, declared=self.declared)
        return json_response({"status": "removed", **ops.mirror_json(row)})

    async def freeze_mirror(self, request: web.Request, actor: ops.Actor, ref: RepoRef) -> web.StreamResponse:
        doc = _Fields(await _body(request, empty_ok=True), ("undo",))
        undo = doc.boolean("undo", default=False)
        row = await asyncio.to_thread(ops.freeze_mirror, self.catalog, actor, ref, undo, declared=self.declared)
        return json_response({"status": "unfrozen" if undo else "frozen", **ops.mirror_json(row)})

    async def sync_mirror(self, request: web.Request, actor: ops.Actor, ref: RepoRef) -> web.StreamResponse:
        _Fields(await _body(request, empty_ok=True), ())
        await asyncio.to_thread(ops.sync_now, self.catalog, actor, ref, _later(self.mirrors.trigger), "api")
        return json_response({"status": "queued", "repo_id": ref.repo_id, "repo_type": ref.repo_type.value},
                             status=202)

    # -- pins -------------------------------------------------------------------------------

    async def list_pins(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        rows = await asyncio.to_thread(ops.list_pins, self.catalog)
        return json_response([ops.pin_json(p) for p in rows])

    async def add_pin(self, request: web.Request, actor: ops.Actor) -> web.StreamResponse:
        doc = _Fields(await _body(request), ("repo", "type", "revision", "note"))
        repo_id = doc.string("repo")
        repo_type = doc.string("type", default="model")
        revision = doc.string("revision", default="main")
        note = doc.string("note", default="", max_len=ops.MAX_NOTE)
        try:
            rtype = RepoType.parse(repo_type)
        except InvalidInput as e:
            raise InvalidInput(f"invalid field 'type': {e.message}") from None
        try:
            ref = RepoRef(rtype, validate_repo_id(repo_id))
        except InvalidInput as e:
            raise InvalidInput(f"invalid field 'repo': {e.message}") from None
        result = await asyncio.to_thread(ops.pin, self.catalog, actor, ref, revision, note, store=self.store)
        if result.missing:
            self._complete_later(actor, ref, result.commit)
        return json_response({"status": "pinned", **result.to_json(), "fetching": bool(result.missing)}, status=201)

    def _complete_later(self, actor: ops.Actor, ref: RepoRef, commit: str) -> None:
        key = (ref, commit)
        running = self._fills.get(key)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._complete(actor, ref, commit), name=f"pin {ref}@{commit}")
        self._fills[key] = task
        task.add_done_callback(lambda t: self._fills.pop(key, None) if self._fills.get(key) is t else None)

    async def _complete(self, actor: ops.Actor, ref: RepoRef, commit: str) -> None:
        """Fetch the files of a pinned commit the store lacks, with the server's syncer."""
        try:
            repo = await asyncio.to_thread(self.catalog.get_repo, ref)
            if repo is None:
                return
            fetched = await self.syncer.complete(repo, commit)
            log.info("pin %s@%s: fetched %d missing files", ref, commit, fetched)
            await asyncio.to_thread(self.catalog.audit, "pin-complete", ref, actor=actor.name, client=actor.client,
                                    commit=commit, files_fetched=fetched)
        except asyncio.CancelledError:
            raise
        except HubMirrorError as e:
            log.warning("pin %s@%s: could not fetch its missing files: %s", ref, commit, e.message)
            try:
                await asyncio.to_thread(self.catalog.audit, "pin-complete-failed", ref, actor=actor.name,
                                        client=actor.client, commit=commit, error=e.message[:500])
            except HubMirrorError:
                pass
        except Exception:
            log.exception("pin %s@%s: fetching its missing files failed", ref, commit)

    async def remove_pin(self, request: web.Request, actor: ops.Actor, ref: RepoRef, revision: str) -> web.StreamResponse:
        await _no_body(request)
        commit = await asyncio.to_thread(ops.unpin, self.catalog, actor, ref, revision)
        return json_response({"status": "unpinned", "repo_id": ref.repo_id, "repo_type": ref.repo_type.value,
                              "commit": commit})

    # -- gc and audit -----------------------------------------------------------------------

    async def gc(self, request: web.Request, actor: ops.Actor) -> web.StreamResponse:
        doc = _Fields(await _body(request, empty_ok=True), ("dry_run",))
        dry_run = doc.boolean("dry_run", default=False)
        report = await asyncio.to_thread(ops.run_gc, self.catalog, self.store, self.data, actor,
                                         config_mirrors=self.config_mirrors, dry_run=dry_run)
        return json_response(report.to_json())

    async def audit(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("since", "limit"))
        since = ops.parse_duration(q["since"], "since") if "since" in q else None
        limit = _limit(q.get("limit", "100"))
        return json_response(await asyncio.to_thread(ops.list_events, self.catalog, since, limit))


# -- helpers ----------------------------------------------------------------------------------


async def _pick(method: str, handlers: dict[str, Handler]) -> web.StreamResponse:
    handler = handlers.get(method)
    if handler is None:
        raise web.HTTPMethodNotAllowed(method, sorted(handlers))
    return await handler()


def _later(trigger: Callable[[RepoRef, str], Any]) -> Callable[[RepoRef, str], None]:
    """MirrorService.trigger, called from a worker thread: it runs on the event loop."""
    loop = asyncio.get_running_loop()

    def call(ref: RepoRef, why: str) -> None:
        loop.call_soon_threadsafe(trigger, ref, why)

    return call


def _repo(segs: list[str]) -> RepoRef:
    """{type}/{repo_id} from raw segments."""
    if len(segs) not in (2, 3) or segs[0] not in TYPES:
        raise NotFound("no such admin route: expected {models|datasets|spaces}/{repo_id}")
    return repo_from_segments(segs[1:], RepoType.parse(segs[0]))


def _limit(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= MAX_AUDIT):
        raise InvalidInput(f"invalid limit {quoted(value, 20)}: a number from 1 to {MAX_AUDIT}")
    return int(value)


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string: each allowed parameter at most once, nothing else."""
    try:
        pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidInput("invalid query: not valid UTF-8 after percent-decoding") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k not in allowed:
            raise InvalidInput(f"unknown query parameter {quoted(k, 40)}"
                               + (f" (allowed: {', '.join(allowed)})" if allowed else " (this route takes none)"))
        if k in out:
            raise InvalidInput(f"query parameter {k!r} given more than once")
        out[k] = v
    return out


async def _read(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"request body too large: at most {MAX_BODY} bytes")
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > MAX_BODY:
            raise PayloadTooLarge(f"request body too large: at most {MAX_BODY} bytes")
    return bytes(buf)


async def _body(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The JSON object a request carries (an empty body: `{}` when `empty_ok`)."""
    _query(request, ())
    raw = await _read(request)
    if not raw.strip() and empty_ok:
        return {}
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise InvalidInput("invalid Content-Type: the body must be JSON, sent as application/json")
    if not raw.strip():
        raise InvalidInput("missing body: a JSON object is expected")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"invalid JSON body: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("invalid body: a JSON object is expected")
    return doc


async def _no_body(request: web.Request) -> None:
    _query(request, ())
    if await _read(request):
        raise InvalidInput("this route takes no body")


_MISSING: Any = object()


class _Fields:
    """The fields of a JSON body, each checked for its type; unknown ones refused."""

    def __init__(self, doc: dict[str, Any], allowed: tuple[str, ...]) -> None:
        unknown = [k for k in doc if k not in allowed]
        if unknown:
            raise InvalidInput(f"unknown field {quoted(unknown[0], 40)}"
                               + (f" (allowed: {', '.join(allowed)})" if allowed else " (this route takes none)"))
        self.doc = doc

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.doc:
            if default is _MISSING:
                raise InvalidInput(f"missing field {key!r}")
            return default
        return self.doc[key]

    def string(self, key: str, default: Any = _MISSING, *, nullable: bool = False, max_len: int = 300) -> Any:
        v = self._get(key, default)
        if v is None and (nullable or default is None):
            return None
        if not isinstance(v, str):
            raise InvalidInput(f"invalid field {key!r}: expected a string{' or null' if nullable else ''}")
        if len(v) > max_len:
            raise InvalidInput(f"invalid field {key!r}: at most {max_len} characters")
        return v

    def strings(self, key: str, *, nullable: bool = False) -> Any:
        v = self._get(key, None if nullable else [])
        if v is None and nullable:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InvalidInput(f"invalid field {key!r}: expected a list of strings{' or null' if nullable else ''}")
        if len(v) > MAX_LIST:
            raise InvalidInput(f"invalid field {key!r}: at most {MAX_LIST} entries")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise InvalidInput(f"invalid field {key!r}: expected true or false")
        return v


def _pydantic_error(err: Any) -> str:
    loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return f"unknown field {quoted(loc, 40)}"
    if err.get("type") == "missing":
        return f"missing field {loc!r}"
    return f"invalid field {quoted(loc, 40)}: {msg}"
