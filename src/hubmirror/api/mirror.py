"""Mirror routes: the Hugging Face webhook receiver and the check-update probe."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ..errors import Forbidden, InvalidInput, NotFound, Unauthorized
from ..model.names import RepoType, validate_revision
from ..sync.check import UpdateChecker
from ..sync.service import MirrorService
from .http import header_safe, json_response
from .routing import repo_from_segments


class MirrorApi:
    def __init__(self, service: MirrorService, checker: UpdateChecker, webhook_secret: str | None) -> None:
        self.service = service
        self.checker = checker
        self.secret = webhook_secret

    async def dispatch(self, request: web.Request, segs: list[str], reader: Any) -> web.StreamResponse:
        """segs: raw segments after /api/; `reader`: this request's guarded reader (policy first)."""
        if segs == ["hooks", "hub"]:
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            return await self.webhook(request)
        if len(segs) >= 4 and segs[0] == "mirror" and segs[-1] == "check-update" and segs[1] in ("models", "datasets", "spaces"):
            if request.method != "GET":
                raise web.HTTPMethodNotAllowed(request.method, ["GET"])
            ref = repo_from_segments(segs[2:-1], RepoType.parse(segs[1]))
            try:  # from the raw query: aiohttp's decoded one replaces invalid UTF-8 instead of refusing it
                pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict")
            except UnicodeDecodeError:
                raise InvalidInput("invalid revision: not valid UTF-8 after percent-decoding") from None
            revs = [v for k, v in pairs if k == "revision"]
            if len(revs) > 1:
                raise InvalidInput("invalid query: give revision at most once")
            rev = validate_revision(revs[0] if revs else "main")
            if rev == "HEAD":
                rev = "main"
            await reader.authorize(ref)  # the same check as every read, before anything is looked up
            answer, stale = await self.checker.check(ref, rev)
            return json_response(answer, headers={"X-HubMirror-Stale": header_safe(stale)} if stale else None)
        raise NotFound(f"no such API route: /api/{'/'.join(segs)[:200]}")

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        if not self.secret:
            raise Forbidden("webhooks are disabled: set webhook_secret (HUBMIRROR_WEBHOOK_SECRET) to enable them")
        given = request.headers.get("X-Webhook-Secret", "")
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            raise Unauthorized("invalid or missing X-Webhook-Secret")
        try:
            payload: Any = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"invalid webhook payload: not JSON ({e})") from None
        repo = payload.get("repo") if isinstance(payload, dict) else None
        event = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(repo, dict) or not isinstance(repo.get("name"), str):
            raise InvalidInput("invalid webhook payload: expected repo.name and repo.type")
        scope = event.get("scope", "") if isinstance(event, dict) else ""
        ref = repo_from_segments(repo["name"].split("/"), RepoType.parse(str(repo.get("type", "model"))))
        if scope and not scope.startswith("repo"):
            return json_response({"status": "ignored", "reason": f"event scope {scope!r} is not about repo content"})
        mirror = await asyncio.to_thread(self.service.catalog.get_mirror, ref)
        if mirror is None:
            return json_response({"status": "ignored", "reason": f"{ref} is not a declared mirror"})
        if not mirror.spec.enabled:
            return json_response({"status": "ignored", "reason": f"mirror {ref} is disabled"})
        self.service.trigger(ref, "webhook")
        return json_response({"status": "queued", "repo_id": ref.repo_id, "repo_type": ref.repo_type.value}, status=202)
