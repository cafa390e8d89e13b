"""The pages everyone may see (within the access policy): overview, repo list, repo page, folders,
lock files. Every catalog read runs in a worker thread; a folder is read one page at a time by its
(repo, commit, parent, path) index, so a folder of 10,000 files costs what a page of it costs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..api.routing import decode_segment, repo_from_segments
from ..errors import EntryNotFound, InvalidInput, NotFound
from ..lifecycle import lockfile
from ..model.names import (
    RepoRef,
    RepoType,
    is_commit_sha,
    validate_path,
    validate_revision,
)
from .card import MAX_CARD, render, split_front_matter
from .queries import (
    KINDS,
    RepoSummary,
    commit_totals,
    folder_count,
    repo_marks,
    repo_refs,
    repo_summaries,
    running_syncs,
)
from .site import get_only

if TYPE_CHECKING:
    from ..catalog import RepoRow
    from .site import Ui, Viewer

LIST_PAGE = 50
FOLDER_PAGE = 200
FLAGS = ("stale", "gone", "pinned", "failing", "frozen", "private")
KIND_KEYS = {"hosted": "local", "mirrored": "mirror", "pulled": "proxy"}


class Pages:
    def __init__(self, ui: Ui) -> None:
        self.ui = ui
        self._cards: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()  # -> (HTML, front matter)

    # -- overview ---------------------------------------------------------------------------

    async def overview(self, request: web.Request, v: Viewer) -> web.Response:
        ui = self.ui
        if ui.policy.anonymous == "none" and v.who.anonymous:
            return ui.page(v, "overview.html", data=None, upstream=None, endpoint=ui.base(request))
        data = await asyncio.to_thread(self._overview, v)
        return ui.page(v, "overview.html", data=data, upstream=self._upstream(v), endpoint=ui.base(request))

    def _visible(self, v: Viewer) -> list[RepoSummary]:
        return [s for s in repo_summaries(self.ui.catalog) if self.ui.readable(v.who, s.row)]

    def _overview(self, v: Viewer) -> dict[str, Any]:
        ui = self.ui
        repos = self._visible(v)
        by_ref = {s.row.ref: s for s in repos}
        running = []
        for r in running_syncs(ui.catalog):
            ref = RepoRef(RepoType(r["repo_type"]), r["repo_id"])
            if ref in by_ref or (ui.catalog.get_repo(ref) is None and ui.policy.may(v.who, ref, "read")):
                running.append({**r, "ref": ref})
        disk = None
        if ui.local_disk is not None:
            du = shutil.disk_usage(ui.local_disk)
            disk = {"total": du.total, "used": du.used, "free": du.free}
        proxy = ui.settings.proxy
        return {
            "total": len(repos),
            "kinds": Counter(s.kind for s in repos),
            "types": Counter(s.row.ref.repo_type.plural for s in repos),
            "stale": [s for s in repos if s.stale],
            "gone": [s for s in repos if s.gone_since],
            "failing": [s for s in repos if s.failing],
            "pinned": sum(1 for s in repos if s.pins),
            "running": running,
            "disk": disk,
            "free": ui.store.free_bytes() if disk is None else None,
            "proxied_bytes": ui.catalog.proxied_bytes() if proxy.enabled else None,
            "proxy_budget": int(proxy.max_bytes) if proxy.max_bytes is not None else None,
            "min_free": int(proxy.min_free),
            "counters": self._counters(),
        }

    def _counters(self) -> dict[str, Any] | None:
        """What this process counted since it started (its metrics' counters): file bytes served,
        file GETs answered from the store (hits) or by a pull-through download (misses), fills."""
        ui = self.ui
        if ui.metrics is None:
            return None
        out: dict[str, Any] = {"served_bytes": int(_total(ui.metrics.bytes_served))}
        cache = getattr(ui.metrics, "cache", None)  # hubmirror_cache_requests{result, origin}
        if cache is not None:
            hits, misses = _total(cache, result="hit"), _total(cache, result="miss")
            out.update(hits=int(hits), misses=int(misses),
                       hit_ratio=hits / (hits + misses) if hits + misses else None)
        if ui.filler is not None:
            st = ui.filler.stats
            out.update(fills=sum(st.started.values()), fill_bytes=sum(st.bytes.values()), fills_failed=st.failed)
        return out

    def _upstream(self, v: Viewer) -> dict[str, Any]:
        ui = self.ui
        if ui.settings.proxy.offline:
            return {"state": "offline", "text": "offline mode: the upstream is never contacted"}
        if ui.breaker.is_open():
            return {"state": "unreachable", "retry_in": round(ui.breaker.retry_in()),
                    "reason": ui.breaker.reason if v.admin else None,
                    "text": "unreachable: cached content is served, branches from their last known commit"}
        return {"state": "reachable", "text": "reachable: no recent failures (the circuit breaker is closed)"}

    # -- repo list --------------------------------------------------------------------------

    async def repo_list(self, request: web.Request, v: Viewer) -> web.Response:
        q = request.rel_url.query
        f = {
            "q": q.get("q", "").strip()[:200],
            "type": _choice(q.get("type", ""), ("", "model", "dataset", "space"), "type"),
            "kind": _choice(q.get("kind", ""), ("", *KIND_KEYS), "kind"),
            "flag": _choice(q.get("flag", ""), ("", *FLAGS), "flag"),
        }
        page = _page(q.get("page", "1"))
        repos = await asyncio.to_thread(self._visible, v)
        hits = [s for s in repos if _matches(s, f)]
        pages = max(1, -(-len(hits) // LIST_PAGE))
        shown = hits[(page - 1) * LIST_PAGE: page * LIST_PAGE]
        return self.ui.page(v, "repos.html", repos=shown, total=len(hits), all_total=len(repos), f=f, page=page,
                            pages=pages, kinds=KIND_KEYS, flags=FLAGS)

    # -- one repo ---------------------------------------------------------------------------

    async def dispatch(self, request: web.Request, v: Viewer, plural: str, tail: list[str]) -> web.StreamResponse:
        if "-" in tail:
            i = tail.index("-")
            repo_segs, view = tail[:i], tail[i + 1:]
        else:
            repo_segs, view = tail, []
        if len(repo_segs) not in (1, 2):
            raise NotFound("no such page: expected /-/{type}/{repo_id}")
        ref = repo_from_segments(repo_segs, RepoType.parse(plural))
        m = request.method
        if not view:
            return await get_only(m, lambda: self.repo_page(request, v, ref))
        if view[0] == "tree" and len(view) >= 2:
            revision = _revision(view[1])
            path = "/".join(decode_segment(s, "path") for s in view[2:] if s != "")
            path = validate_path(path, allow_root=True) if path else ""
            return await get_only(m, lambda: self.folder_page(request, v, ref, revision, path))
        if view[0] == "lock" and len(view) == 2:
            return await get_only(m, lambda: self.lock_file(v, ref, _revision(view[1])))
        raise NotFound("no such page")

    async def repo_page(self, request: web.Request, v: Viewer, ref: RepoRef) -> web.Response:
        row = await self.ui.repo(v, ref)  # the policy first: a hidden repo is a missing one
        rev = request.rel_url.query.get("revision")
        data = await asyncio.to_thread(self._repo, v, row, _revision(rev) if rev else None)
        data["endpoint"] = self.ui.base(request)
        return self.ui.page(v, "repo.html", **data)

    def _repo(self, v: Viewer, row: RepoRow, revision: str | None) -> dict[str, Any]:
        cat = self.ui.catalog
        refs = repo_refs(cat, row)
        by_name = {r.name: r.commit for r in refs}
        if revision is None:
            revision = next((r.short for r in refs if r.kind == "branch" and r.short == "main"),
                            refs[0].short if refs else None)
        out: dict[str, Any] = {"repo": row, "refs": refs, "revision": revision, "kinds": KINDS}
        mirror = cat.get_mirror(row.ref)
        state: dict[str, dict[str, Any]] = {}  # ref name -> {"ok": bool, "upstream": commit}
        unmirrored: list[tuple[str, str]] = []  # (revision, upstream commit) with no ref here yet
        if mirror is not None:
            for rev, up in mirror.upstream.items():
                if is_commit_sha(rev):
                    continue
                name = next((n for n in _ref_names(rev) if n in by_name), None)
                if name is None:
                    unmirrored.append((rev, up))
                else:
                    state[name] = {"ok": by_name[name] == up, "upstream": up}
        repointed = {}
        for ev in cat.audit_events(row.ref, "tag-repointed-upstream"):
            d = ev["detail"]
            if isinstance(d, dict) and by_name.get(str(d.get("tag"))) != d.get("upstream"):
                repointed[str(d.get("tag"))] = d  # the newest event of each tag still kept at ours
        out.update(mirror=mirror, state=state, unmirrored=unmirrored, repointed=repointed,
                   marks=repo_marks(cat, row), runs=cat.runs(row.ref, 20), hooks=cat.hook_runs(row.ref, 20))
        if revision is None:
            out.update(commit=None, files=None, card=None, lock_preview=None)
            return out
        sha = cat.resolve(row, revision)
        commit = cat.get_commit(row, sha)
        out.update(commit=commit, sha=sha, totals=commit_totals(cat, row, sha),
                   files=self._listing(v, row, sha, revision, "", None), card=self._card(v, row, sha),
                   lock_preview=self._lock_preview(row, revision, sha))
        return out

    def _listing(self, v: Viewer, row: RepoRow, sha: str, revision: str, path: str,
                 after: str | None) -> dict[str, Any]:
        cat = self.ui.catalog
        entries = cat.list_entries(row, sha, under=path, after=after, limit=FOLDER_PAGE + 1)
        more = len(entries) > FOLDER_PAGE
        entries = entries[:FOLDER_PAGE]
        return {"entries": entries, "count": folder_count(cat, row, sha, path), "path": path,
                "next": v.urls.tree(row.ref, revision, path, after=entries[-1].path) if more else None,
                "first": v.urls.tree(row.ref, revision, path) if after else None}

    def _card(self, v: Viewer, row: RepoRow, sha: str) -> dict[str, Any] | None:
        cat, store = self.ui.catalog, self.ui.store
        e = cat.get_entry(row, sha, "README.md")
        if e is None or not e.is_file:
            return None
        if e.sha256 is None or store.stat(e.sha256) is None:
            return {"html": None, "meta": "", "truncated": False}  # listed, bytes not cached (pull-through)
        key = (e.sha256, v.urls.file(row.ref, sha, ""))
        hit = self._cards.get(key)
        if hit is None:
            text = b"".join(store.read(e.sha256, 0, min(e.size, MAX_CARD))).decode("utf-8", "replace")
            meta, body = split_front_matter(text)
            hit = self._cards[key] = (render(body, lambda p: v.urls.file(row.ref, sha, p)), meta.strip())
            if len(self._cards) > 256:
                self._cards.popitem(last=False)
        return {"html": hit[0], "meta": hit[1], "truncated": e.size > MAX_CARD}

    def _lock_preview(self, row: RepoRow, revision: str, sha: str) -> str:
        files = self.ui.catalog.list_entries(row, sha, recursive=True, files_only=True, limit=3)
        locked = lockfile.LockedRepo(row.ref, revision, sha,
                                     [lockfile.LockedFile(f.path, f.size, f.sha256 or "(not known yet)") for f in files])
        return lockfile.dumps([locked])

    async def folder_page(self, request: web.Request, v: Viewer, ref: RepoRef, revision: str, path: str) -> web.Response:
        row = await self.ui.repo(v, ref)
        after = request.rel_url.query.get("after")
        if after is not None and (len(after) > 4096 or "\x00" in after):
            raise InvalidInput("invalid after: not a path")

        def run() -> dict[str, Any]:
            cat = self.ui.catalog
            sha = cat.resolve(row, revision)
            if path:
                d = cat.get_entry(row, sha, path)
                if d is None or d.is_file:
                    raise EntryNotFound(f"{path} is not a folder of {ref} at {revision}", commit=sha)
            return {"repo": row, "revision": revision, "sha": sha, "files": self._listing(v, row, sha, revision, path,
                                                                                             after)}

        data = await asyncio.to_thread(run)
        crumbs = []
        parts = path.split("/") if path else []
        for i, p in enumerate(parts):
            crumbs.append((p, v.urls.tree(ref, revision, "/".join(parts[: i + 1]))))
        return self.ui.page(v, "folder.html", crumbs=crumbs, **data)

    async def lock_file(self, v: Viewer, ref: RepoRef, revision: str) -> web.Response:
        await self.ui.repo(v, ref)
        repos = await asyncio.to_thread(lockfile.build, self.ui.catalog, [(ref, revision)])
        name = f"{ref.repo_id.replace('/', '--')}.lock"
        return web.Response(text=lockfile.dumps(repos), content_type="text/plain", charset="utf-8",
                            headers={**self.ui.t.headers, "Content-Disposition": f'attachment; filename="{name}"'})


def _total(counter: Any, **labels: str) -> float:
    """The sum of a counter's `_total` samples (of this process) whose labels include `labels`."""
    return float(sum(x.value for m in counter.collect() for x in m.samples
                     if x.name.endswith("_total") and all(x.labels.get(k) == val for k, val in labels.items())))


def _ref_names(rev: str) -> list[str]:
    return [rev] if rev.startswith("refs/") else [f"refs/heads/{rev}", f"refs/tags/{rev}"]


def _revision(raw: str) -> str:
    rev = validate_revision(decode_segment(raw, "revision"))
    return "main" if rev == "HEAD" else rev


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidInput(f"invalid {what} {value[:40]!r}: one of {', '.join(a for a in allowed if a)}")
    return value


def _page(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= len(value) <= 6 and int(value) >= 1):
        raise InvalidInput(f"invalid page {value[:20]!r}: a number from 1")
    return int(value)


def _matches(s: RepoSummary, f: dict[str, str]) -> bool:
    if f["q"] and f["q"].lower() not in s.row.ref.repo_id.lower():
        return False
    if f["type"] and s.row.ref.repo_type.value != f["type"]:
        return False
    if f["kind"] and s.row.origin != KIND_KEYS[f["kind"]]:
        return False
    flag = f["flag"]
    return not flag or {
        "stale": s.stale, "gone": s.gone_since is not None, "pinned": s.pins > 0, "failing": s.failing,
        "frozen": s.frozen, "private": s.row.private or bool(s.row.gated),
    }[flag]

