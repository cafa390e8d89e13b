"""Parse the *raw* request path into Hub routes.

Revisions and tree sub-paths arrive with '/' encoded as %2F (`refs%2Fpr%2F1`, `sub%2Fdir`),
so we route on the undecoded path and decode each segment exactly once. The repo id is found
by the keyword segment after it (`resolve`, `tree`, ...), not by counting segments, because
single-segment ids (`gpt2`) are still sent by the clients. Where two readings are possible
(`/api/models/gpt2/refs` is repo `gpt2` + `refs`, or repo `gpt2/refs`), every reading is
returned and the handler picks the first repo that exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ..errors import InvalidInput, InvalidPath
from ..model.names import (
    RepoRef,
    RepoType,
    validate_path,
    validate_repo_id,
    validate_revision,
)

API_KEYWORDS = frozenset(
    {"revision", "tree", "paths-info", "refs", "commits", "xet-read-token", "treesize", "auth-check", "resolve"}
)


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # resolve | info | tree | paths-info | refs | commits | xet-read-token | auth-check
    repo: RepoRef
    revision: str | None = None
    path: str = ""


def decode_segment(seg: str, what: str) -> str:
    try:
        return unquote_to_bytes(seg).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"invalid {what} {seg!r}: not valid UTF-8 after percent-decoding") from e


def _file_path(raw_segments: list[str]) -> str:
    parts = []
    for s in raw_segments:
        d = decode_segment(s, "path")
        if "/" in d or "\\" in d:
            raise InvalidPath(f"invalid path segment {s!r}: encoded separators are not allowed in a file path")
        parts.append(d)
    return validate_path("/".join(parts))


def _tree_path(raw_segments: list[str]) -> str:
    path = "/".join(decode_segment(s, "path") for s in raw_segments)
    return validate_path(path, allow_root=True) if path else ""


def repo_from_segments(segs: list[str], repo_type: RepoType) -> RepoRef:
    """A repo id from raw path segments (each decoded once; an encoded '/' is refused)."""
    parts = [decode_segment(s, "repo id") for s in segs]
    if any("/" in p for p in parts):
        raise InvalidInput(f"invalid repo id {'/'.join(segs)!r}: encoded '/' in a repo id")
    return RepoRef(repo_type, validate_repo_id("/".join(parts)))


def parse_api(segs: list[str], repo_type: RepoType) -> list[Route]:
    """segs: raw segments after `/api/{type}s/`."""
    routes: list[Route] = []
    first_error: InvalidInput | None = None
    for n in (2, 1):
        if len(segs) < n:
            continue
        tail = segs[n:]
        if tail and tail[0] not in API_KEYWORDS:
            continue
        try:
            repo = repo_from_segments(segs[:n], repo_type)
            routes.append(_api_route(repo, tail))
        except InvalidInput as e:
            first_error = first_error or e
    if not routes:
        if first_error:
            raise first_error
        raise InvalidInput("unknown API route")
    return routes


def _api_route(repo: RepoRef, tail: list[str]) -> Route:
    if not tail:
        return Route("info", repo)
    kw, rest = tail[0], tail[1:]
    if kw == "refs" and not rest:
        return Route("refs", repo)
    if kw == "auth-check" and not rest:
        return Route("auth-check", repo)
    if kw in ("revision", "paths-info", "commits", "xet-read-token", "treesize") and len(rest) == 1:
        return Route("info" if kw == "revision" else kw, repo, _revision(rest[0]))
    if kw == "tree" and len(rest) >= 1:
        return Route("tree", repo, _revision(rest[0]), _tree_path(rest[1:]))
    raise InvalidInput(f"unknown API route for {repo}: /{'/'.join(tail)}")


DEFAULT_BRANCH = "main"


def _revision(raw: str) -> str:
    """A revision segment; `HEAD` (what the JavaScript client asks for by default) is the
    default branch."""
    rev = validate_revision(decode_segment(raw, "revision"))
    return DEFAULT_BRANCH if rev == "HEAD" else rev


def parse_file(segs: list[str]) -> list[Route]:
    """segs: raw segments of `/{prefix}{repo_id}/resolve/{rev}/{path...}`."""
    repo_type = RepoType.MODEL
    if segs and segs[0] in ("datasets", "spaces", "models"):
        repo_type = RepoType.parse(segs[0])
        segs = segs[1:]
    routes: list[Route] = []
    first_error: InvalidInput | None = None
    for n in (2, 1):
        tail = segs[n:]
        if len(segs) < n or len(tail) < 3 or tail[0] != "resolve":
            continue
        try:
            routes.append(Route("resolve", repo_from_segments(segs[:n], repo_type), _revision(tail[1]), _file_path(tail[2:])))
        except InvalidInput as e:
            first_error = first_error or e
    if not routes and first_error:
        raise first_error
    return routes
