"""Templates, URLs and the headers of every UI answer.

Pages are Jinja2 templates with autoescaping on (a repo id, a commit title or an audit detail is
text, never markup); the only markup that is not escaped is the model card, which card.py has
sanitized. Every answer carries a Content-Security-Policy that allows no script at all, styles
and images from this server only, forms posting only here and no framing, plus
X-Frame-Options DENY, nosniff and no-store (pages depend on who is signed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from aiohttp import web

from ..model.names import RepoRef

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'{img}; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def security_headers(img_origins: str = "") -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP.format(img=img_origins),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def human_size(n: int | None) -> str:
    """Decimal units, as the Hub shows sizes: 37 B, 2.1 MB."""
    if n is None:
        return ""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n_ = n / 1000
        if n_ < 1000 or unit == "PB":
            return f"{n_:.1f} {unit}"
        n = int(n_)
    return f"{n} B"  # not reached


def when(d: datetime | None) -> str:
    if d is None:
        return "-"
    if d.tzinfo is not None:
        d = d.astimezone(UTC)
    return d.strftime("%Y-%m-%d %H:%M UTC")


def iso(d: datetime | None) -> str:
    if d is None:
        return ""
    if d.tzinfo is not None:
        d = d.astimezone(UTC).replace(tzinfo=None)
    return d.replace(microsecond=0).isoformat() + "Z"


def _seg(s: str) -> str:
    return quote(s, safe="")


def _path(p: str) -> str:
    return "/".join(_seg(s) for s in p.split("/")) if p else ""


@dataclass(frozen=True, slots=True)
class Urls:
    """Every link of the UI, under `root` (the path of public_url, or a trusted X-Forwarded-Prefix)."""

    root: str = ""

    def home(self) -> str:
        return self.root + "/"

    def ui(self, *parts: str, **query: Any) -> str:
        q = {k: v for k, v in query.items() if v not in (None, "") and not (k == "page" and v == 1)}
        return self.root + "/-/" + "/".join(parts) + (f"?{urlencode(q)}" if q else "")

    def static(self, name: str) -> str:
        return self.ui("static", name)

    def repos(self, **query: Any) -> str:
        return self.ui("repos", **query)

    def repo(self, ref: RepoRef, revision: str | None = None) -> str:
        return self.ui(ref.repo_type.plural, ref.repo_id, revision=revision)

    def tree(self, ref: RepoRef, revision: str, path: str = "", after: str | None = None) -> str:
        tail = "/".join(x for x in (_seg(revision), _path(path)) if x)
        return self.ui(ref.repo_type.plural, ref.repo_id, "-", "tree", tail, after=after)

    def lock(self, ref: RepoRef, revision: str) -> str:
        return self.ui(ref.repo_type.plural, ref.repo_id, "-", "lock", _seg(revision))

    def file(self, ref: RepoRef, commit: str, path: str) -> str:
        """The Hub's download URL of a file, served by the read API."""
        return f"{self.root}/{ref.repo_type.url_prefix}{ref.repo_id}/resolve/{_seg(commit)}/{_path(path)}"


def root_of(base_url: str) -> str:
    return urlsplit(base_url).path.rstrip("/")


class Templates:
    def __init__(self, img_origins: str = "") -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("hubmirror.ui", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.filters.update(size=human_size, when=when, iso=iso, short=lambda s: (s or "")[:12],
                                num=lambda n: f"{n:,}")
        self.headers = security_headers(img_origins)

    def page(self, name: str, *, status: int = 200, headers: dict[str, str] | None = None,
             **context: Any) -> web.Response:
        body = self.env.get_template(name).render(**context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                            headers={**self.headers, **(headers or {})})

    def redirect(self, location: str, *, status: int = 303) -> web.Response:
        return web.Response(status=status, headers={**self.headers, "Location": location})
