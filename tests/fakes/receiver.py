"""A webhook receiver for the tests: a real aiohttp server on a free port, in a thread of its own,
that records every request (path, headers, exact body bytes) and answers what the test scripted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        """How a receiver verifies X-Hubmirror-Signature (the README's recipe)."""
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-Hubmirror-Signature", ""))


class Receiver:
    """`answers[path]`: statuses answered in turn to the attempts of one delivery (the last one
    repeats; default 200), or a callable (number of earlier attempts of this delivery on that path ->
    web.Response). `delay`: seconds before each answer."""

    def __init__(self, port: int = 0, *, answers: dict[str, list[int] | Callable[[int], web.StreamResponse]] | None = None,
                 delay: float = 0.0) -> None:
        self.port = port
        self.answers = answers or {}
        self.delay = delay
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            delivery = request.headers.get("X-Hubmirror-Delivery")
            n = sum(1 for r in self.received if r.path == request.path
                    and r.headers.get("X-Hubmirror-Delivery") == delivery)
            script = self.answers.get(request.path, [200])
            if callable(script):
                resp = script(n)
            else:
                resp = web.Response(status=script[min(n, len(script) - 1)], text="scripted answer")
            self.received.append(Received(request.path, dict(request.headers), body, resp.status, time.time()))
        return resp

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{self.port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
