"""The admin pages: mirrors (add, sync now, freeze, unfreeze), pins, tokens (create, shown once;
revoke) and the audit log, through the same ops/ functions as the CLI and the admin API
(DESIGN.md principle 10), audited with the signed-in admin as the actor.

Only a session of an `admin` token, from an address in `access.admin_allow_ips`, gets here (the
admin API's rule); anyone else who tries is refused with a 403 and, as by the admin API, the
refusal is audited (`admin-denied`). Every POST carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from .. import ops
from ..errors import Forbidden, HubMirrorError, InvalidInput, NotFound
from ..model.access import Role
from ..model.mirror import MirrorSpec
from ..model.names import RepoRef, RepoType, validate_repo_id
from ..sync.service import describe
from .queries import mirror_refs, running_syncs

if TYPE_CHECKING:
    from .site import Ui, Viewer

Page = Callable[..., Awaitable[web.Response]]  # a section: (request, viewer, error=None)
Action = Callable[[web.Request, "Viewer", ops.Actor, dict[str, str]], Awaitable[web.StreamResponse]]

SECTIONS = ("mirrors", "pins", "tokens", "audit")
SINCE = ("1h", "1d", "7d", "30d", "")
LIMITS = ("100", "500", "2000")
DONE = {  # ?done= after a form: what the banner says (never text taken from the request)
    "mirror-added": "Mirror declared; the scheduler syncs it within a few seconds.",
    "sync-queued": "Sync queued.",
    "frozen": "Mirror frozen: it is served as it is and not synced.",
    "unfrozen": "Mirror unfrozen: it syncs on its schedule again.",
    "pinned": "Pinned. Files the store lacks are being fetched.",
    "unpinned": "Unpinned.",
    "revoked": "Token revoked: it stopped working at once.",
}


class AdminPages:
    def __init__(self, ui: Ui) -> None:
        self.ui = ui

    async def dispatch(self, request: web.Request, v: Viewer, rest: list[str]) -> web.StreamResponse:
        ui = self.ui
        if v.who.anonymous and request.method in ("GET", "HEAD"):
            return ui.t.redirect(v.urls.ui("signin", next=v.urls.root + request.rel_url.path_qs), status=302)
        if not v.admin:
            if v.who.anonymous:
                reason = "no token"
            elif v.who.role is Role.ADMIN:
                reason = "address not in access.admin_allow_ips"
            else:
                reason = f"token role {(v.who.role or Role.READ).value}"
            await ui.admin_api.refused(request, v.who, f"web UI: {reason}")
            raise Forbidden("the admin pages need a sign-in with an admin token, from an address in "
                            "access.admin_allow_ips")
        if not rest:
            return ui.t.redirect(v.urls.ui("admin", "mirrors"), status=302)
        section, action = rest[0], rest[1:]
        if section not in SECTIONS or len(action) > 1:
            raise NotFound("no such admin page")
        m = request.method
        if not action:
            if m not in ("GET", "HEAD"):
                raise web.HTTPMethodNotAllowed(m, ["GET", "HEAD"])
            return await self._sections()[section](request, v)
        if m != "POST":
            raise web.HTTPMethodNotAllowed(m, ["POST"])
        handler = self._actions().get((section, action[0]))
        if handler is None:
            raise NotFound("no such admin action")
        form = await ui.checked_form(request, v)
        actor = ops.Actor.of(v.who)
        return await handler(request, v, actor, form)

    def _sections(self) -> dict[str, Page]:
        return {"mirrors": self.mirrors, "pins": self.pins, "tokens": self.tokens, "audit": self.audit}

    def _actions(self) -> dict[tuple[str, str], Action]:
        return {("mirrors", "add"): self.add_mirror, ("mirrors", "sync"): self.sync_mirror,
                ("mirrors", "freeze"): self.freeze_mirror, ("pins", "add"): self.add_pin,
                ("pins", "remove"): self.remove_pin, ("tokens", "create"): self.create_token,
                ("tokens", "revoke"): self.revoke_token}

    def _page(self, v: Viewer, name: str, request: web.Request, **ctx: Any) -> web.Response:
        done = DONE.get(request.rel_url.query.get("done", ""))
        return self.ui.page(v, name, section=name.removeprefix("admin_").removesuffix(".html"), done=done, **ctx)

    async def _failed(self, request: web.Request, v: Viewer, section: str, e: HubMirrorError) -> web.Response:
        """The section again, with what went wrong (a 4xx: the form can be corrected and sent again)."""
        resp = await self._sections()[section](request, v, error=e.message)
        resp.set_status(e.status if 400 <= e.status < 500 else 500)
        return resp

    # -- mirrors ----------------------------------------------------------------------------

    async def mirrors(self, request: web.Request, v: Viewer, error: str | None = None) -> web.Response:
        ui = self.ui

        def load() -> dict[str, Any]:
            refs = mirror_refs(ui.catalog)
            rows = []
            for m in ops.list_mirrors(ui.catalog):
                d = describe(m, refs.get(m.spec.ref, {}))
                rows.append({**d, "ref": m.spec.ref, "config": m.source == "config", "last_sync_at": m.last_sync_at,
                             "next_run_at": m.next_run_at})
            return {"mirrors": rows, "running": running_syncs(ui.catalog)}

        data = await asyncio.to_thread(load)
        running = {(r["repo_type"], r["repo_id"]) for r in data["running"]}
        return self._page(v, "admin_mirrors.html", request, error=error, running=running, mirrors=data["mirrors"],
                          refresh=bool(running))

    async def add_mirror(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        try:
            doc: dict[str, Any] = {"repo": form.get("repo", "").strip(), "type": form.get("type", "model"),
                                   "schedule": form.get("schedule", "").strip() or "1h",
                                   "revisions": _words(form.get("revisions", "")) or ["main"],
                                   "include": _words(form.get("include", "")), "exclude": _words(form.get("exclude", "")),
                                   "allow_gated": form.get("allow_gated") == "on"}
            try:
                spec = MirrorSpec.model_validate(doc)
            except ValidationError as e:
                raise InvalidInput("; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'mirror'}: "
                                             f"{str(err['msg']).removeprefix('Value error, ')}"
                                             for err in e.errors()[:5])) from None
            await asyncio.to_thread(ops.add_mirror, self.ui.catalog, actor, spec, source="ui",
                                    declared=self.ui.admin_api.declared)
        except HubMirrorError as e:
            return await self._failed(request, v, "mirrors", e)
        return self.ui.t.redirect(v.urls.ui("admin", "mirrors", done="mirror-added"))

    async def sync_mirror(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        trigger = self.ui.admin_api.mirrors.trigger

        def later(ref: RepoRef, why: str) -> None:  # called in the worker thread: start it on the loop
            loop.call_soon_threadsafe(trigger, ref, why)

        try:
            ref = _ref(form)
            await asyncio.to_thread(ops.sync_now, self.ui.catalog, actor, ref, later, "ui")
        except HubMirrorError as e:
            return await self._failed(request, v, "mirrors", e)
        return self.ui.t.redirect(v.urls.ui("admin", "mirrors", done="sync-queued"))

    async def freeze_mirror(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        undo = form.get("undo") == "1"
        try:
            ref = _ref(form)
            await asyncio.to_thread(ops.freeze_mirror, self.ui.catalog, actor, ref, undo,
                                    declared=self.ui.admin_api.declared)
        except HubMirrorError as e:
            return await self._failed(request, v, "mirrors", e)
        return self.ui.t.redirect(v.urls.ui("admin", "mirrors", done="unfrozen" if undo else "frozen"))

    # -- pins -------------------------------------------------------------------------------

    async def pins(self, request: web.Request, v: Viewer, error: str | None = None) -> web.Response:
        rows = await asyncio.to_thread(ops.list_pins, self.ui.catalog)
        pins = [{**p, "ref": RepoRef(RepoType(p["repo_type"]), p["repo_id"])} for p in rows]
        return self._page(v, "admin_pins.html", request, error=error, pins=pins)

    async def add_pin(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        ui = self.ui
        try:
            ref = _ref(form)
            result = await asyncio.to_thread(ops.pin, ui.catalog, actor, ref, form.get("revision", "").strip() or "main",
                                             form.get("note", ""), store=ui.store)
        except HubMirrorError as e:
            return await self._failed(request, v, "pins", e)
        if result.missing:
            # the admin API's background completion, so that a pin made here fetches what it lacks the same way
            ui.admin_api._complete_later(actor, ref, result.commit)
        return ui.t.redirect(v.urls.ui("admin", "pins", done="pinned"))

    async def remove_pin(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        try:
            ref = _ref(form)
            await asyncio.to_thread(ops.unpin, self.ui.catalog, actor, ref, form.get("revision", ""))
        except HubMirrorError as e:
            return await self._failed(request, v, "pins", e)
        return self.ui.t.redirect(v.urls.ui("admin", "pins", done="unpinned"))

    # -- tokens -----------------------------------------------------------------------------

    async def tokens(self, request: web.Request, v: Viewer, error: str | None = None) -> web.Response:
        def load() -> tuple[Any, Any]:
            return ops.list_tokens(self.ui.catalog), ops.list_users(self.ui.catalog)

        tokens, users = await asyncio.to_thread(load)
        return self._page(v, "admin_tokens.html", request, error=error, tokens=[ops.token_json(t) for t in tokens],
                          users=[u.name for u in users])

    async def create_token(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        ui = self.ui
        try:
            expires = form.get("expires", "").strip()
            lifetime = ops.parse_duration(expires, "expires") if expires else None
            repos = _words(form.get("repos", "")) or None
            new = await asyncio.to_thread(ops.create_token, ui.catalog, actor, form.get("name", "").strip(),
                                          form.get("user", "").strip(), form.get("role", "read"), lifetime, repos)
        except HubMirrorError as e:
            return await self._failed(request, v, "tokens", e)
        # shown once, in this answer only (no-store, like every page); a reload does not show it again
        return ui.page(v, "admin_token_created.html", section="tokens", done=None, token=new.token,
                       info=ops.token_json(new.info), endpoint=ui.base(request))

    async def revoke_token(self, request: web.Request, v: Viewer, actor: ops.Actor, form: dict[str, str]) -> web.StreamResponse:
        ui = self.ui
        try:
            await asyncio.to_thread(ops.revoke_token, ui.catalog, actor, form.get("name", ""))
        except HubMirrorError as e:
            return await self._failed(request, v, "tokens", e)
        ui.admin_api.auth.forget()  # the API stops taking it now, not when its cache entry runs out
        return ui.t.redirect(v.urls.ui("admin", "tokens", done="revoked"))

    # -- audit ------------------------------------------------------------------------------

    async def audit(self, request: web.Request, v: Viewer, error: str | None = None) -> web.Response:
        q = request.rel_url.query
        since = q.get("since", "1d")
        limit = q.get("limit", "100")
        if since not in SINCE or limit not in LIMITS:
            raise InvalidInput(f"invalid since or limit: since one of {', '.join(s or 'all' for s in SINCE)}, "
                               f"limit one of {', '.join(LIMITS)}")
        lookback = ops.parse_duration(since, "since") if since else None
        events = await asyncio.to_thread(ops.list_events, self.ui.catalog, lookback, int(limit))
        return self._page(v, "admin_audit.html", request, error=error, events=list(reversed(events)), since=since,
                          limit=limit, sinces=SINCE, limits=LIMITS)


def _words(text: str) -> list[str]:
    """Values separated by spaces or commas."""
    return [w for w in text.replace(",", " ").split() if w]


def _ref(form: dict[str, str]) -> RepoRef:
    try:
        return RepoRef(RepoType.parse(form.get("type", "model")), validate_repo_id(form.get("repo", "").strip()))
    except InvalidInput as e:
        raise InvalidInput(f"invalid repo: {e.message}") from None
