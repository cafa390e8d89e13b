"""Hub-compatible read routes (HUB_PROTOCOL.md section 12), dispatched on the raw path."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from aiohttp import web

from ..errors import InvalidInput, NotFound, Unauthorized
from ..model.access import ANONYMOUS, Principal, Role
from ..model.entries import Entry, hub_time
from ..model.names import RepoType, validate_path
from ..serve import LocalReader, Reader, Snapshot
from ..serve.policy import Guarded, Policy
from ..serve.stream import conditional_answer, requested_start
from .http import (
    EXPOSE,
    ProxyTrust,
    base_url,
    content_disposition,
    guess_type,
    header_safe,
    json_response,
    raw_path,
)
from .routing import Route, parse_api, parse_file

PRINCIPAL = web.RequestKey("principal", Principal)
GUARDED = web.RequestKey("guarded", Guarded)

TREE_PAGE = 1000
TREE_PAGE_EXPANDED = 50
COMMITS_PAGE = 50
MAX_PATHS_INFO = 1000
ROUTE = "hubmirror.route"  # the request's parsed route (repo, revision, path), once known


class HubApi:
    def __init__(
        self, reader: Reader, local: LocalReader, policy: Policy, *, public_url: str | None, trust: ProxyTrust,
        mirror_api: Any = None, admin_api: Any = None,
    ) -> None:
        self.reader = reader
        self.local = local
        self.policy = policy
        self.mirror_api = mirror_api
        self.admin_api = admin_api
        self.public_url = public_url
        self.trust = trust

    # -- dispatch ---------------------------------------------------------------------------

    def guarded(self, request: web.Request) -> Guarded:
        """This request's reader: the policy asked first, for the principal the gate found."""
        g = request.get(GUARDED)
        if g is None:
            g = Guarded(self.reader, self.local, self.policy, request.get(PRINCIPAL) or ANONYMOUS)
            request[GUARDED] = g
        return g

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = raw_path(request)
        segs = raw.split("/")[1:]
        method = request.method
        if segs and segs[0] == "api":
            return await self._api(request, segs[1:], method)
        if method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
        if "resolve" in segs:
            routes = parse_file(segs)
            if routes:
                route = await self._pick(request, routes)
                return await self.resolve(request, route)
        raise NotFound(f"no such route: {raw[:200]}")

    async def _pick(self, request: web.Request, routes: list[Route]) -> Route:
        if len(routes) == 1:
            request[ROUTE] = routes[0]  # for the log record of a failure
            return routes[0]
        chosen = await self.guarded(request).pick_route([r.repo for r in routes])
        route = next(r for r in routes if r.repo == chosen)
        request[ROUTE] = route
        return route

    async def _api(self, request: web.Request, segs: list[str], method: str) -> web.StreamResponse:
        if segs == ["whoami-v2"]:
            return self.whoami(request)
        if segs == ["agent-harnesses"]:
            return json_response({"standardEnvVars": [], "harnesses": {}})
        if segs and segs[0] == "admin" and self.admin_api is not None:
            return await self.admin_api.dispatch(request, segs)  # type: ignore[no-any-return]
        if segs and segs[0] in ("hooks", "mirror") and self.mirror_api is not None:
            return await self.mirror_api.dispatch(request, segs, self.guarded(request))  # type: ignore[no-any-return]
        if len(segs) >= 2 and segs[0] in ("models", "datasets", "spaces"):
            route = await self._pick(request, parse_api(segs[1:], RepoType.parse(segs[0])))
            handler = {
                ("GET", "info"): self.info,
                ("HEAD", "info"): self.info,
                ("GET", "tree"): self.tree,
                ("POST", "paths-info"): self.paths_info,
                ("GET", "refs"): self.refs,
                ("GET", "commits"): self.commits,
                ("GET", "auth-check"): self.auth_check,
                ("GET", "xet-read-token"): self.xet_read_token,
            }.get((method, route.kind))
            if handler is None:
                raise web.HTTPMethodNotAllowed(method, [])
            return await handler(request, route)
        raise NotFound(f"no such API route: /api/{'/'.join(segs)[:200]}")

    # -- files ------------------------------------------------------------------------------

    async def resolve(self, request: web.Request, route: Route) -> web.StreamResponse:
        assert route.revision is not None
        hit = await self.guarded(request).file(route.repo, route.revision, route.path)
        e = hit.entry
        etag = e.etag()
        headers = {
            "X-Repo-Commit": hit.commit,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": guess_type(e.path),
            "Content-Disposition": content_disposition(e.path),
            "Access-Control-Expose-Headers": EXPOSE,
            "Cache-Control": "public, max-age=31536000, immutable"
            if route.revision == hit.commit
            else "no-cache",
        }
        if e.lfs:
            headers["X-Linked-Etag"] = f'"{e.sha256}"'
            headers["X-Linked-Size"] = str(e.size)
        if hit.stale:
            headers["X-HubMirror-Stale"] = header_safe(hit.stale)
        early = await conditional_answer(request, e.size, headers, etag)
        if early is not None:
            return early

        def alive() -> bool:
            return request.transport is not None and not request.transport.is_closing()

        body = await self.guarded(request).open_blob(hit, head=request.method == "HEAD",
                                           start=requested_start(request, e.size, etag), alive=alive)
        return await body.send(request, e.size, headers, etag)

    # -- repo info --------------------------------------------------------------------------

    async def info(self, request: web.Request, route: Route) -> web.StreamResponse:
        snap = await self.guarded(request).snapshot(route.repo, route.revision or "main")
        q = request.rel_url.query
        expand = q.getall("expand", []) + q.getall("expand[]", [])
        blobs = q.get("blobs", "").lower() in ("1", "true")
        files = await self.guarded(request).files(snap)
        card = await self.guarded(request).card(snap)
        data = self._info_json(snap, files, card, blobs)
        extra = await self.guarded(request).extra_info(snap)
        if extra:
            data.update({k: v for k, v in extra.items() if k not in ("id", "sha", "siblings")})
        if expand:
            keep = set(expand) | {"_id", "id"}
            data = {k: v for k, v in data.items() if k in keep}
        return json_response(data, headers=_snap_headers(snap))

    def _info_json(self, snap: Snapshot, files: list[Entry], card: dict[str, Any] | None, blobs: bool) -> dict[str, Any]:
        ref = snap.repo.ref
        siblings: list[dict[str, Any]] = []
        for f in files:
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s["size"] = f.size
                s["blobId"] = f.oid
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(s)
        card = card or {}
        tags = card.get("tags") if isinstance(card.get("tags"), list) else []
        data: dict[str, Any] = {
            "_id": f"{snap.repo.pk:024x}",
            "id": ref.repo_id,
            "author": ref.repo_id.split("/")[0] if "/" in ref.repo_id else None,
            "sha": snap.commit.sha,
            "lastModified": hub_time(snap.commit.date),
            "createdAt": hub_time(snap.repo.created_at),
            "private": snap.repo.private,
            "gated": snap.repo.gated or False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [str(t) for t in tags],
            "cardData": card or None,
            "siblings": siblings,
            "usedStorage": sum(f.size for f in files),
        }
        if ref.repo_type is RepoType.MODEL:
            data["modelId"] = ref.repo_id
            for key in ("library_name", "pipeline_tag"):
                if isinstance(card.get(key), str):
                    data[key] = card[key]
        if ref.repo_type is RepoType.SPACE and isinstance(card.get("sdk"), str):
            data["sdk"] = card["sdk"]
        return data

    # -- listings ---------------------------------------------------------------------------

    async def tree(self, request: web.Request, route: Route) -> web.StreamResponse:
        assert route.revision is not None
        q = request.rel_url.query
        recursive = _flag(q.get("recursive"))
        expand = _flag(q.get("expand"))
        limit = TREE_PAGE_EXPANDED if expand else TREE_PAGE
        if "limit" in q:
            limit = max(1, min(limit, _int(q["limit"], "limit")))
        after = _decode_cursor(q["cursor"]) if q.get("cursor") else None
        snap = await self.guarded(request).snapshot(route.repo, route.revision)
        entries = await self.guarded(request).tree(snap, route.path, recursive=recursive, after=after, limit=limit + 1)
        headers = {**_snap_headers(snap), "Access-Control-Expose-Headers": EXPOSE}
        if len(entries) > limit:
            entries = entries[:limit]
            params = [(k, v) for k, v in parse_qsl(request.rel_url.raw_query_string) if k not in ("cursor", "token")]
            params.append(("cursor", _encode_cursor(entries[-1].path)))
            base = base_url(request, self.public_url, self.trust)
            headers["Link"] = f'<{base}{raw_path(request)}?{urlencode(params)}>; rel="next"'
        return json_response(await self._entries_json(request, snap, entries, expand), headers=headers)

    async def _entries_json(
        self, request: web.Request, snap: Snapshot, entries: list[Entry], expand: bool
    ) -> list[dict[str, Any]]:
        if not expand:
            return [e.to_hub() for e in entries]
        commits = await self.guarded(request).commit_infos(snap.repo, [e.last_commit for e in entries if e.last_commit])
        out = []
        for e in entries:
            c = commits.get(e.last_commit or "")
            last = {"id": c.sha, "title": c.title, "date": hub_time(c.date)} if c else None
            out.append(e.to_hub(last))
        return out

    async def paths_info(self, request: web.Request, route: Route) -> web.StreamResponse:
        assert route.revision is not None
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        body = await request.read()
        paths: list[Any]
        if ctype == "application/json":
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise InvalidInput(f"invalid JSON body: {e}") from e
            if not isinstance(doc, dict) or not isinstance(doc.get("paths", []), list):
                raise InvalidInput('invalid JSON body: expected {"paths": [...], "expand": bool}')
            paths = doc.get("paths", [])
            expand = bool(doc.get("expand", False))
        else:
            try:
                form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
            except UnicodeDecodeError as e:
                raise InvalidInput("invalid form body: not UTF-8") from e
            paths = [v for k, v in form if k == "paths"]
            expand = any(k == "expand" and _flag(v) for k, v in form)
        if len(paths) > MAX_PATHS_INFO:
            raise InvalidInput(f"too many paths: {len(paths)} (at most {MAX_PATHS_INFO})")
        clean: list[str] = []
        for p in paths:
            if not isinstance(p, str):
                raise InvalidInput(f"invalid path {p!r}: not a string")
            clean.append(validate_path(p))
        snap = await self.guarded(request).snapshot(route.repo, route.revision)
        entries = await self.guarded(request).paths_info(snap, clean)
        return json_response(await self._entries_json(request, snap, entries, expand), headers={"X-Repo-Commit": snap.commit.sha})

    async def refs(self, request: web.Request, route: Route) -> web.StreamResponse:
        refs = await self.guarded(request).refs(route.repo)
        out: dict[str, list[dict[str, str]]] = {"branches": [], "converts": [], "tags": []}
        include_prs = _flag(request.rel_url.query.get("include_prs"))
        if include_prs:
            out["pullRequests"] = []
        for name, commit in sorted(refs.items()):
            for prefix, key in (
                ("refs/heads/", "branches"),
                ("refs/tags/", "tags"),
                ("refs/convert/", "converts"),
                ("refs/pr/", "pullRequests"),
            ):
                if name.startswith(prefix) and key in out:
                    out[key].append({"name": name[len(prefix) :], "ref": name, "targetCommit": commit})
        return json_response(out)

    async def commits(self, request: web.Request, route: Route) -> web.StreamResponse:
        assert route.revision is not None
        q = request.rel_url.query
        page = _int(q.get("p", "0"), "p")
        formatted = "formatted" in (q.getall("expand[]", []) + q.getall("expand", []))
        snap = await self.guarded(request).snapshot(route.repo, route.revision)
        log = await self.guarded(request).commits(snap)
        chunk = log[page * COMMITS_PAGE : (page + 1) * COMMITS_PAGE]
        items = []
        for c in chunk:
            d = c.to_hub()
            if formatted:
                d["formatted"] = {"title": _html(c.title), "message": _html(c.message)}
            items.append(d)
        headers = {"X-Total-Count": str(len(log)), "Access-Control-Expose-Headers": EXPOSE}
        if (page + 1) * COMMITS_PAGE < len(log):
            params = [(k, v) for k, v in parse_qsl(request.rel_url.raw_query_string) if k not in ("p", "token")]
            params.append(("p", str(page + 1)))
            base = base_url(request, self.public_url, self.trust)
            headers["Link"] = f'<{base}{raw_path(request)}?{urlencode(params)}>; rel="next"'
        return json_response(items, headers=headers)

    async def auth_check(self, request: web.Request, route: Route) -> web.StreamResponse:
        await self.guarded(request).refs(route.repo)  # RepoNotFound if absent
        return json_response({})

    async def xet_read_token(self, request: web.Request, route: Route) -> web.StreamResponse:
        raise NotFound("this mirror does not serve Xet; download over HTTP (no Xet hints are advertised)")

    def whoami(self, request: web.Request) -> web.StreamResponse:
        who: Principal = request.get(PRINCIPAL) or ANONYMOUS
        if who.anonymous:
            raise Unauthorized("Invalid user token.")
        return json_response(
            {
                "type": "user",
                "id": hashlib.sha256(f"user:{who.user}".encode()).hexdigest()[:24],
                "name": who.user,
                "fullname": who.user,
                "isPro": False,
                "orgs": [{"type": "org", "name": g, "fullname": g, "roleInOrg": "read"} for g in sorted(who.groups)],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": who.token, "role": (who.role or Role.READ).value}},
            }
        )


def _snap_headers(snap: Snapshot) -> dict[str, str]:
    h = {"X-Repo-Commit": snap.commit.sha}
    if snap.stale:
        h["X-HubMirror-Stale"] = header_safe(snap.stale)
    return h


def _flag(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes")


def _int(v: str, name: str) -> int:
    try:
        n = int(v)
    except ValueError as e:
        raise InvalidInput(f"invalid {name} {v!r}: expected a non-negative integer") from e
    if n < 0 or n > 10**9:
        raise InvalidInput(f"invalid {name} {v!r}: expected a non-negative integer")
    return n


def _encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"invalid cursor {cursor[:80]!r}") from e


def _html(text: str) -> str:
    return html.escape(text)

