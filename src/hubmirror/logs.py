"""Logging for the server: plain lines, or one JSON object per line (`log_format = "json"`), each
carrying the id of the request it concerns.

* Every request gets an id: the client's `X-Request-Id` when it is a short token of safe
  characters (a load balancer's id then joins both logs), else a new random one. It is returned
  in the `X-Request-Id` response header and set in a context variable, so every log record made
  while the request is handled carries it as `request_id`.
* A failed request's log record carries the repo, revision and path it concerns (`repo`,
  `revision`, `path`), in JSON as fields, in plain lines after the message.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web

REQUEST_ID: ContextVar[str | None] = ContextVar("hubmirror_request_id", default=None)
REQUEST_ID_KEY = "hubmirror.request_id"  # the request's id, also in the aiohttp request
_GIVEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CONTEXT_FIELDS = ("repo", "revision", "path")


class _Context(logging.Filter):
    """Adds the current request's id (or the one a record was given) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class _Text(logging.Formatter):
    """`time LEVEL logger message [repo=... revision=... path=...] (request id)`."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        rid = getattr(record, "request_id", None)
        return line + (f" [{ctx}]" if ctx else "") + (f" (request {rid})" if rid else "")


def setup(level: str, fmt: str, *, pid: bool = False) -> None:
    """Configure the root logger for the server (`fmt`: "text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context())
    if fmt == "json":
        # python-json-logger: every record's standard and extra fields as one JSON object
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d" if pid else
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z"))
    else:
        handler.setFormatter(_Text("%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s" if pid else
                                   "%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


def request_id(request: web.BaseRequest) -> str:
    """The id of this request (made on first use)."""
    rid = request.get(REQUEST_ID_KEY)
    if rid is None:
        given = request.headers.get("X-Request-Id", "")
        rid = given if _GIVEN.fullmatch(given) else secrets.token_hex(8)
        request[REQUEST_ID_KEY] = rid
    return str(rid)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    REQUEST_ID.set(request_id(request))
    return await handler(request)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer says its request's id (streamed ones too: set before their headers go)."""
    response.headers["X-Request-Id"] = request_id(request)


def install(app: web.Application) -> None:
    app.on_response_prepare.append(on_prepare)


def context(repo: Any = None, revision: str | None = None, path: str | None = None) -> dict[str, Any]:
    """`extra=` for a log record about a repo, revision and path."""
    return {k: v for k, v in (("repo", str(repo) if repo else None), ("revision", revision), ("path", path)) if v}
