"""A repo's README (its model or dataset card) as safe HTML.

Two independent guards, so that one mistake is not enough:

1. markdown-it-py renders with raw HTML off: a `<script>` or `<img onerror=...>` in the README
   comes out as text, and it refuses `javascript:`, `vbscript:`, `file:` and `data:` links.
2. nh3 (the Rust `ammonia` sanitizer) then keeps only an allowlist of tags and attributes and
   only http, https and mailto URLs, and gives every link rel="noopener noreferrer nofollow".

The page's Content-Security-Policy allows no script at all and images only from this server, so
even a sanitizer bug could not run code or call out. Relative links and images (`![](img/a.png)`,
`[config](config.json)`) point at the file's /resolve URL at the commit shown.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import quote, urlsplit

import nh3
from markdown_it import MarkdownIt

MAX_CARD = 512 * 1024  # bytes of README rendered at most

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}
_ATTRS = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}}
_SCHEMES = {"http", "https", "mailto"}


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"])


_MD = _markdown()


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML front matter, the rest) of a card; ("", text) without one."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end >= 0:
            after = text.find("\n", end + 4)
            return text[3:end], text[after + 1:] if after >= 0 else ""
    return "", text


def _rewrite(url: str, base_dir: str, file_url: Any) -> str:
    """A relative URL of the README -> the /resolve URL of that file; others unchanged."""
    if not url or url.startswith(("#", "/", "\\")):
        return url
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return url
    target = posixpath.normpath(posixpath.join(base_dir, parts.path)) if parts.path else ""
    if not target or target == "." or target.startswith(("..", "/")):
        return "#"
    return str(file_url(target)) + (f"#{quote(parts.fragment)}" if parts.fragment else "")


def render(text: str, file_url: Any, base_dir: str = "") -> str:
    """Sanitized HTML of a Markdown card. `file_url(path)`: the URL of a file of the repo."""
    tokens = _MD.parse(text)
    stack = list(tokens)
    while stack:
        tok = stack.pop()
        if tok.children:
            stack.extend(tok.children)
        if tok.type == "link_open" and tok.attrGet("href") is not None:
            tok.attrSet("href", _rewrite(str(tok.attrGet("href")), base_dir, file_url))
        elif tok.type == "image" and tok.attrGet("src") is not None:
            tok.attrSet("src", _rewrite(str(tok.attrGet("src")), base_dir, file_url))
    html = _MD.renderer.render(tokens, _MD.options, {})
    return clean(html)


def clean(html: str) -> str:
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRS, url_schemes=_SCHEMES,
                     link_rel="noopener noreferrer nofollow", strip_comments=True)
