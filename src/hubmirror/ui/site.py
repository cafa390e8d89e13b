"""The web UI's front door: routes, who is looking, sign-in and sign-out, forms, error pages.

URLs (all but the overview under /-/, a segment no repo id can have, so that no UI path shadows
a model's /{namespace}/{name}/resolve/... URL):

    GET  /                                      overview
    GET  /-/repos?q=&type=&kind=&flag=&page=     repo list with search and filters
    GET  /-/{models|datasets|spaces}/{repo_id}[?revision=]          repo page
    GET  /-/{type}/{repo_id}/-/tree/{revision}/{path}[?after=]     a folder, a page at a time
    GET  /-/{type}/{repo_id}/-/lock/{revision}                     the lock file of a revision
    GET  /-/signin, POST /-/signin, POST /-/signout
    GET  /-/admin/{mirrors|pins|tokens|audit}, POST /-/admin/...   admins only (admin.py)
    GET  /-/static/ui.css

Every repo is looked at through the same policy as the read API (DESIGN.md principle 9): the
repo pages ask `Guarded.authorize` before anything else, lists and counts keep only repos the
viewer may read, and a repo the viewer may not read gets the very page a missing one gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from ..api.http import base_url, raw_path
from ..api.hub import PRINCIPAL
from ..catalog import RepoRow
from ..errors import (
    Forbidden,
    HubMirrorError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RepoNotFound,
)
from ..model.access import Principal, Role, is_foreign_token, is_token, token_hash
from ..model.names import RepoRef
from ..serve.policy import Guarded
from ..store.local import LocalBlobStore
from .render import Templates, Urls, root_of
from .session import (
    COOKIE,
    SIGNIN_COOKIE,
    Session,
    Sessions,
    load_key,
    new_signin_csrf,
    same,
)

if TYPE_CHECKING:
    from ..api.admin import AdminApi
    from ..api.hub import HubApi
    from ..api.metrics import Metrics
    from ..app import Services
    from ..hub import CircuitBreaker
    from ..proxy import Filler

MAX_FORM = 64 * 1024
TYPES = ("models", "datasets", "spaces")


@dataclass(frozen=True, slots=True)
class Viewer:
    who: Principal
    session: Session | None
    csrf: str | None
    admin: bool  # an admin token, from an address in access.admin_allow_ips
    urls: Urls
    drop_cookie: bool = False  # the request carried a session cookie that is no longer good


class Ui:
    """What the pages need, taken from the server's parts (app.py builds them; nothing new is opened)."""

    def __init__(self, api: HubApi, admin: AdminApi, services: Services, *, breaker: CircuitBreaker,
                 filler: Filler | None, metrics: Metrics | None) -> None:
        s = services.settings
        self.settings = s
        self.catalog = services.catalog
        self.store = services.store
        self.policy = api.policy
        self.local = api.local
        self.public_url = api.public_url
        self.trust = api.trust
        self.admin_api = admin
        self.breaker = breaker
        self.filler = filler
        self.metrics = metrics
        secret = s.ui.session_secret.get_secret_value() if s.ui.session_secret else None
        self.sessions = Sessions(services.catalog, load_key(secret, s.data), s.ui.session_ttl)
        img = ""
        if s.store_redirect and (s.s3.public_endpoint or s.s3.endpoint):  # README images may be redirected there
            u = urlsplit(str(s.s3.public_endpoint or s.s3.endpoint))
            img = f" {u.scheme}://{u.netloc}"
        self.t = Templates(img)
        self.css = (resources.files("hubmirror.ui") / "static" / "ui.css").read_bytes()
        self.local_disk = services.store.root if isinstance(services.store, LocalBlobStore) else None
        from .admin import AdminPages
        from .pages import Pages

        self.pages = Pages(self)
        self.admin_pages = AdminPages(self)

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        viewer: Viewer | None = None
        try:
            viewer = await self.viewer(request)
            resp = await self._route(request, viewer)
        except HubMirrorError as e:
            resp = self.error(request, viewer, e)
        except web.HTTPMethodNotAllowed as e:
            resp = self.error(request, viewer, HubMirrorError(f"{request.method[:20]} is not allowed here"),
                              status=405, headers={"Allow": ", ".join(sorted(e.allowed_methods))})
        if viewer is not None and viewer.drop_cookie and COOKIE not in resp.cookies:
            resp.del_cookie(COOKIE, path=self.cookie_path(viewer))  # a stale session: the browser forgets it
        return resp

    async def _route(self, request: web.Request, v: Viewer) -> web.StreamResponse:
        raw = raw_path(request)
        m = request.method
        if raw == "/":
            return await get_only(m, lambda: self.pages.overview(request, v))
        segs = raw.split("/")[1:]
        if not segs or segs[0] != "-":
            raise NotFound("no such page")
        rest = segs[1:]
        if rest and rest[-1] == "" and len(rest) > 1:
            rest = rest[:-1]  # a trailing slash
        head = rest[0] if rest else ""
        if head == "":
            return self.t.redirect(v.urls.home(), status=302)
        if rest == ["static", "ui.css"]:
            return await get_only(m, lambda: self._css())
        if rest == ["repos"]:
            return await get_only(m, lambda: self.pages.repo_list(request, v))
        if rest == ["signin"]:
            if m == "POST":
                return await self.sign_in(request, v)
            return await get_only(m, lambda: self.signin_form(request, v))
        if rest == ["signout"]:
            if m != "POST":
                raise web.HTTPMethodNotAllowed(m, ["POST"])
            return await self.sign_out(request, v)
        if head == "admin":
            return await self.admin_pages.dispatch(request, v, rest[1:])
        if head in TYPES:
            return await self.pages.dispatch(request, v, head, rest[1:])
        raise NotFound("no such page")

    async def _css(self) -> web.StreamResponse:
        return web.Response(body=self.css, content_type="text/css", charset="utf-8",
                            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    # -- who is looking ---------------------------------------------------------------------

    def base(self, request: web.Request) -> str:
        """The URL clients reach this server at (public_url, or the Host header; see api/http.py)."""
        return base_url(request, self.public_url, self.trust)

    async def viewer(self, request: web.Request) -> Viewer:
        urls = Urls(root_of(self.base(request)))
        who: Principal = request.get(PRINCIPAL) or Principal(client=self.trust.client_address(request))
        session = None
        cookie = request.cookies.get(COOKIE)
        if cookie:
            session = self.sessions.open(cookie)
            if session is not None:
                p = await self.sessions.principal(session, who.client)
                if p is None:
                    session = None
                else:
                    who = p
        admin = who.role is Role.ADMIN and self.admin_api.admin_address(request)
        return Viewer(who, session, self.sessions.csrf(session) if session else None, admin, urls,
                      drop_cookie=bool(cookie) and session is None)

    def readable(self, who: Principal, row: RepoRow) -> bool:
        """Exactly what Guarded.authorize lets through, for a repo of the catalog."""
        if not self.policy.may(who, row.ref, "read"):
            return False
        return not (row.private or row.gated) or self.policy.may(who, row.ref, "read", private=True)

    async def repo(self, v: Viewer, ref: RepoRef) -> RepoRow:
        """The catalog's row of a repo the viewer may read; RepoNotFound (the same for a repo that
        is missing and for one the viewer may not read) otherwise. The policy is asked first."""
        await Guarded(self.local, self.local, self.policy, v.who).authorize(ref)
        row = await self.local.repo_row(ref)
        if row is None:
            raise RepoNotFound(f"Repository not found: {ref}")
        return row

    # -- pages common to all ----------------------------------------------------------------

    def page(self, v: Viewer, name: str, *, status: int = 200, headers: dict[str, str] | None = None,
             **context: Any) -> web.Response:
        return self.t.page(name, status=status, headers=headers, v=v, u=v.urls, anonymous_none=(
            self.policy.anonymous == "none" and v.who.anonymous), **context)

    def error(self, request: web.Request, v: Viewer | None, e: HubMirrorError, *, status: int | None = None,
              headers: dict[str, str] | None = None) -> web.Response:
        if v is None:
            try:
                root = root_of(self.base(request))
            except HubMirrorError:
                root = ""
            v = Viewer(Principal(client=self.trust.client_address(request)), None, None, False, Urls(root))
        if isinstance(e, RepoNotFound):
            # the same page whether the repo is missing or hidden from this viewer: nothing of why
            title, message, code = "Repository not found", "There is no such repository here.", 404
        else:
            code = status or (e.status if 400 <= e.status < 600 else 500)
            title = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Method not allowed",
                     409: "Conflict", 413: "Too large"}.get(code, "Error")
            message = e.message
        return self.page(v, "error.html", status=code, headers=headers, title=title, message=message)

    # -- forms ------------------------------------------------------------------------------

    async def form(self, request: web.Request) -> dict[str, str]:
        """An application/x-www-form-urlencoded body of at most 64 KiB; each field at most once."""
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise InvalidInput("a form is expected (application/x-www-form-urlencoded)")
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise PayloadTooLarge(f"form too large: at most {MAX_FORM} bytes")
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > MAX_FORM:
                raise PayloadTooLarge(f"form too large: at most {MAX_FORM} bytes")
        try:
            pairs = parse_qsl(buf.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise InvalidInput("the form is not valid UTF-8") from None
        out: dict[str, str] = {}
        for k, val in pairs:
            if k in out:
                raise InvalidInput(f"form field {k[:40]!r} given more than once")
            out[k] = val
        return out

    def same_origin(self, request: web.Request, v: Viewer) -> bool:
        """Refuse a form another site made the browser send (a second guard beside the CSRF token)."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # old browsers and curl send none; the CSRF token decides
        allowed = {urlsplit(self.base(request)).netloc, request.headers.get("Host", "")}
        if self.public_url:
            allowed.add(urlsplit(self.public_url).netloc)
        return urlsplit(origin).netloc in allowed - {""}

    async def checked_form(self, request: web.Request, v: Viewer) -> dict[str, str]:
        """The form of a signed-in viewer, after the origin and CSRF checks (403 otherwise)."""
        form = await self.form(request)
        if not self.same_origin(request, v):
            raise Forbidden("this form was sent from another site: refused")
        if v.session is None or not self.sessions.csrf_ok(v.session, form.get("csrf")):
            raise Forbidden("the form is out of date or did not come from this site (CSRF check failed): "
                            "reload the page and try again")
        return form

    # -- sign-in ----------------------------------------------------------------------------

    def cookie_path(self, v: Viewer) -> str:
        return v.urls.root + "/"

    def secure(self, request: web.Request) -> bool:
        """Secure cookies when the UI is reached over https (public_url, or a trusted proxy saying so)."""
        return request.secure or self.base(request).startswith("https://")

    async def signin_form(self, request: web.Request, v: Viewer, *, error: str | None = None,
                          status: int = 200) -> web.Response:
        nxt = self._next(v, request.rel_url.query.get("next"))
        token = new_signin_csrf()
        resp = self.page(v, "signin.html", status=status, error=error, signin_csrf=token, next=nxt)
        resp.set_cookie(SIGNIN_COOKIE, token, path=self.cookie_path(v), max_age=3600, httponly=True,
                        samesite="Strict", secure=self.secure(request))
        return resp

    def _next(self, v: Viewer, nxt: str | None) -> str:
        """Where to go after signing in: a page of this UI, never another site."""
        home = v.urls.home()
        if not nxt or len(nxt) > 2000 or not nxt.startswith(v.urls.root + "/") or nxt.startswith("//") \
                or any(c in nxt for c in "\\\r\n\t") or not nxt.isprintable():
            return home
        return nxt

    async def sign_in(self, request: web.Request, v: Viewer) -> web.StreamResponse:
        form = await self.form(request)
        if not self.same_origin(request, v) or not same(form.get("csrf"), request.cookies.get(SIGNIN_COOKIE)):
            raise Forbidden("the sign-in form is out of date or did not come from this site (CSRF check failed): "
                            "reload it and try again")
        token = form.get("token", "").strip()
        if is_foreign_token(token):
            return await self.signin_form(request, v, status=401, error=(
                "That is a Hugging Face token: it grants nothing here. Sign in with a hubmirror token (hm_...)."))
        row = await asyncio.to_thread(self.catalog.token_by_hash, token_hash(token)) if is_token(token) else None
        if row is None or not row.usable():
            return await self.signin_form(request, v, status=401, error=(
                "This token is not valid here (unknown, revoked or expired)."))
        value, _ = self.sessions.issue(row.id, token_hash(token))
        who = Principal(client=v.who.client, user=row.user, groups=frozenset(row.groups), role=row.role,
                        token=row.name)
        await asyncio.to_thread(self.catalog.audit, "ui-signin", None, actor=who.actor, client=who.client)
        resp = self.t.redirect(self._next(v, form.get("next")))
        resp.set_cookie(COOKIE, value, path=self.cookie_path(v), max_age=int(self.sessions.ttl), httponly=True,
                        samesite="Lax", secure=self.secure(request))
        resp.del_cookie(SIGNIN_COOKIE, path=self.cookie_path(v))
        return resp

    async def sign_out(self, request: web.Request, v: Viewer) -> web.StreamResponse:
        await self.checked_form(request, v)
        assert v.session is not None
        self.sessions.end(v.session)
        resp = self.t.redirect(v.urls.home())
        resp.del_cookie(COOKIE, path=self.cookie_path(v))
        return resp


async def get_only(method: str, handler: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
    return await handler()


def mount_ui(app: web.Application, api: HubApi, admin: AdminApi, services: Services, *,
             breaker: CircuitBreaker, filler: Filler | None = None, metrics: Metrics | None = None) -> None:
    """Serve the UI at / and /-/ (before the read API's catch-all route); off with ui.enabled = false."""
    if not services.settings.ui.enabled:
        return
    ui = Ui(api, admin, services, breaker=breaker, filler=filler, metrics=metrics)
    app.router.add_get("/", ui.handle)
    app.router.add_route("*", r"/-/{tail:[\s\S]*}", ui.handle)
