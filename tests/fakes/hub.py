"""A fake upstream Hub: a real HTTP server on a free port, with a CDN on a second port, shaped
like huggingface.co (302 to another origin for LFS files, Xet hints, paginated trees with
absolute links) and able to inject faults: 429/5xx, bodies cut mid-way, flipped bytes, slow
bodies, deleted repos, branches that move while a client is reading.

It counts every call and every file byte it serves, and records which Authorization headers
reached which origin.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from hubmirror.model.gitobj import git_blob_sha1, lfs_pointer

_counter = itertools.count(1)
_COUNTED = web.RequestKey("counted", bool)


@dataclass
class FakeCommit:
    sha: str
    files: dict[str, bytes]
    lfs: set[str]
    title: str
    date: datetime
    parent: str | None


@dataclass
class FakeRepo:
    repo_type: str
    repo_id: str
    commits: dict[str, FakeCommit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    gated: str | bool = False


@dataclass
class Fault:
    kind: str  # status | cut | flip | slow | hook | redirect | respond (params fn: async request -> response)
    match: str  # glob on the request path
    times: int
    params: dict[str, Any]


class FakeHub:
    def __init__(self, *, page_size: int = 5, token: str | None = None) -> None:
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.page_size = page_size
        self.token = token
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of ranged requests
        self.inflight = 0
        self.max_inflight = 0  # the most requests this server was answering at the same moment
        self.bytes_served: dict[str, int] = defaultdict(int)  # "repo_id/path" -> bytes
        self.auth_seen: list[tuple[str, str | None]] = []  # (origin, Authorization)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.cdn_url = ""

    # -- content ----------------------------------------------------------------------------

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        repo_type: str = "model",
        branch: str = "main",
        message: str = "update",
        lfs: set[str] | None = None,
    ) -> str:
        with self._lock:
            repo = self.repos.setdefault((repo_type, repo_id), FakeRepo(repo_type, repo_id))
            parent = repo.refs.get(f"refs/heads/{branch}")
            sha = hashlib.sha1(f"{repo_id}{branch}{next(_counter)}{time.time()}".encode()).hexdigest()
            if lfs is None:
                lfs = {p for p, d in files.items() if p.endswith((".bin", ".safetensors")) or len(d) >= 10 * 1024 * 1024}
            repo.commits[sha] = FakeCommit(sha, dict(files), set(lfs), message, datetime.now(timezone.utc), parent)
            repo.refs[f"refs/heads/{branch}"] = sha
            return sha

    def tag(self, repo_id: str, tag: str, sha: str, repo_type: str = "model") -> None:
        with self._lock:
            self.repos[(repo_type, repo_id)].refs[f"refs/tags/{tag}"] = sha

    def delete_repo(self, repo_id: str, repo_type: str = "model") -> None:
        with self._lock:
            self.repos.pop((repo_type, repo_id), None)

    def fault(self, kind: str, match: str = "*", times: int = 1, **params: Any) -> None:
        with self._lock:
            self.faults.append(Fault(kind, match, times, params))

    def file_bytes(self, repo_id: str, path: str | None = None) -> int:
        if path is not None:
            return self.bytes_served.get(f"{repo_id}/{path}", 0)
        return sum(v for k, v in self.bytes_served.items() if k.startswith(repo_id + "/"))

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.ranges.clear()
            self.bytes_served.clear()
            self.auth_seen.clear()

    def _take_fault(self, path: str, kinds: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in kinds and f.times > 0 and fnmatch.fnmatchcase(path, f.match):
                    f.times -= 1
                    return f
        return None

    # -- server -----------------------------------------------------------------------------

    def start(self) -> FakeHub:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            hub_app = web.Application(middlewares=[self._middleware])
            hub_app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)
            cdn_app = web.Application(middlewares=[self._middleware])
            cdn_app.router.add_get(r"/blob/{sha}", self._cdn)
            self._runners = [web.AppRunner(hub_app), web.AppRunner(cdn_app)]
            for r in self._runners:
                loop.run_until_complete(r.setup())
            sites = [web.TCPSite(r, "127.0.0.1", 0) for r in self._runners]
            for s in sites:
                loop.run_until_complete(s.start())
            ports = [s._server.sockets[0].getsockname()[1] for s in sites]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{ports[0]}"
            self.cdn_url = f"http://127.0.0.1:{ports[1]}"
            ready.set()
            loop.run_forever()
            for r in self._runners:
                loop.run_until_complete(r.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving (idempotent): the upstream "goes away"."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        origin = f"{request.scheme}://{request.host}"
        with self._lock:
            self.calls.append((request.method, request.raw_path))
            if "Range" in request.headers:
                self.ranges.append((request.raw_path.split("?")[0], request.headers["Range"]))
            self.auth_seen.append((origin, request.headers.get("Authorization")))
        path = request.raw_path.split("?")[0]
        f = self._take_fault(path, ("status",))
        if f is not None:
            status = int(f.params.get("status", 500))
            headers = dict(f.params.get("headers", {}))
            return web.Response(status=status, text=f"injected {status}", headers=headers)
        f = self._take_fault(path, ("redirect",))
        if f is not None:
            loc = str(f.params.get("location", request.raw_path))
            return web.Response(status=302, headers={"Location": loc})
        f = self._take_fault(path, ("hook",))
        if f is not None:
            f.params["fn"]()
        f = self._take_fault(path, ("respond",))
        if f is not None:  # a hostile answer written by the test
            return await f.params["fn"](request)  # type: ignore[no-any-return]
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        request[_COUNTED] = True
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._done(request)

    def _done(self, request: web.Request) -> None:
        """A request stops counting as in flight once its last byte is handed over (at most once)."""
        if request.get(_COUNTED):
            request[_COUNTED] = False
            with self._lock:
                self.inflight -= 1

    # -- routes -----------------------------------------------------------------------------

    def _err(self, status: int, code: str, msg: str, commit: str | None = None) -> web.Response:
        h = {"X-Error-Code": code, "X-Error-Message": msg}
        if commit:
            h["X-Repo-Commit"] = commit
        return web.json_response({"error": msg}, status=status, headers=h)

    def _repo(self, repo_type: str, repo_id: str) -> FakeRepo | None:
        return self.repos.get((repo_type, repo_id))

    def _resolve(self, repo: FakeRepo, rev: str) -> FakeCommit | None:
        if rev in repo.commits:
            return repo.commits[rev]
        for name in (rev, f"refs/heads/{rev}", f"refs/tags/{rev}"):
            if name in repo.refs:
                return repo.commits[repo.refs[name]]
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        segs = request.raw_path.split("?")[0].split("/")[1:]
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._err(401, "RepoNotFound", "Invalid credentials")
        if segs[0] == "api" and segs[1] in ("models", "datasets", "spaces"):
            repo_type = segs[1][:-1]
            repo_id = "/".join(unquote(s) for s in segs[2:4])
            repo = self._repo(repo_type, repo_id)
            if repo is None:
                return self._err(401, "RepoNotFound", "Repository not found")
            tail = segs[4:]
            if not tail or tail[0] == "revision":
                rev = unquote(tail[1]) if tail else "main"
                c = self._resolve(repo, rev)
                if c is None:
                    return self._err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return web.json_response({
                    "id": repo_id, "sha": c.sha, "private": repo.private, "gated": repo.gated,
                    "pipeline_tag": "feature-extraction", "library_name": "sentence-transformers",
                    "lastModified": c.date.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "siblings": [{"rfilename": p} for p in sorted(c.files)],
                })
            if tail[0] == "refs":
                def items(prefix: str) -> list[dict[str, str]]:
                    return [{"name": n[len(prefix):], "ref": n, "targetCommit": s}
                            for n, s in sorted(repo.refs.items()) if n.startswith(prefix)]
                return web.json_response({"branches": items("refs/heads/"), "tags": items("refs/tags/"), "converts": []})
            if tail[0] == "tree":
                return self._tree(request, repo, unquote(tail[1]))
            if tail[0] == "commits":
                c = self._resolve(repo, unquote(tail[1]))
                if c is None:
                    return self._err(404, "RevisionNotFound", "Invalid rev id")
                out = []
                while c is not None:
                    out.append({"id": c.sha, "title": c.title, "message": c.title, "date": c.date.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                                "authors": [{"user": "fake"}]})
                    c = repo.commits.get(c.parent) if c.parent else None
                return web.json_response(out)
            return self._err(404, "", "no such route")
        # file routes
        repo_type = "model"
        if segs[0] in ("datasets", "spaces"):
            repo_type, segs = segs[0][:-1], segs[1:]
        if len(segs) >= 4 and segs[2] == "resolve":
            repo = self._repo(repo_type, "/".join(segs[:2]))
            if repo is None:
                return self._err(401, "RepoNotFound", "Repository not found")
            c = self._resolve(repo, unquote(segs[3]))
            if c is None:
                return self._err(404, "RevisionNotFound", "Invalid rev id")
            path = "/".join(unquote(s) for s in segs[4:])
            if path not in c.files:
                return self._err(404, "EntryNotFound", f"{path} does not exist", commit=c.sha)
            data = c.files[path]
            if path in c.lfs:
                sha = hashlib.sha256(data).hexdigest()
                return web.Response(status=302, headers={
                    "Location": f"{self.cdn_url}/blob/{sha}?repo={quote(repo.repo_id)}&path={quote(path)}&sig=x",
                    "X-Repo-Commit": c.sha, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                    "ETag": f'"{sha}"', "X-Xet-Hash": "ab" * 32,
                    "Link": f'<{self.url}/api/models/{repo.repo_id}/xet-read-token/{c.sha}>; rel="xet-auth"',
                })
            headers = {"X-Repo-Commit": c.sha, "ETag": f'"{git_blob_sha1(data)}"'}
            return await self._send(request, data, headers, f"{repo.repo_id}/{path}")
        return self._err(404, "", "no such route")

    def _tree(self, request: web.Request, repo: FakeRepo, rev: str) -> web.Response:
        c = self._resolve(repo, rev)
        if c is None:
            return self._err(404, "RevisionNotFound", "Invalid rev id")
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p, data in sorted(c.files.items()):
            parts = p.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            if p in c.lfs:
                sha = hashlib.sha256(data).hexdigest()
                ptr = lfs_pointer(sha, len(data))
                entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(ptr),
                                "lfs": {"oid": sha, "size": len(data), "pointerSize": len(ptr)}, "xetHash": "cd" * 32})
            else:
                entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)})
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0} for d in sorted(dirs)]
        start = int(request.query.get("cursor", "0"))
        page = entries[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(entries):
            q = f"recursive={request.query.get('recursive', 'false')}&expand=false&cursor={start + self.page_size}"
            headers["Link"] = f'<{self.url}{request.path}?{q}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha"]
        repo_id, path = request.query.get("repo", ""), request.query.get("path", "")
        for repo in self.repos.values():
            for c in repo.commits.values():
                for p, data in c.files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        return await self._send(request, data, {"ETag": '"cdn-etag"'}, f"{repo_id}/{path or p}")
        return web.Response(status=404, text="no such blob")

    async def _send(self, request: web.Request, data: bytes, headers: dict[str, str], key: str) -> web.StreamResponse:
        start, end, status = 0, len(data), 200
        rng = request.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a)
            end = int(b) + 1 if b else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = bytearray(data[start:end])
        path = request.raw_path.split("?")[0]
        flip = self._take_fault(path, ("flip",))
        if flip is not None and body:
            i = min(int(flip.params.get("at", len(body) // 2)), len(body) - 1)
            body[i] ^= 0xFF
        cut = self._take_fault(path, ("cut",))
        slow = self._take_fault(path, ("slow",))
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        sent = 0
        chunk = 64 * 1024
        while sent < len(body):
            if cut is not None and sent >= int(cut.params.get("at", len(body) // 2)):
                assert request.transport is not None
                request.transport.close()
                return resp
            n = min(chunk, len(body) - sent)
            if cut is not None:
                n = min(n, max(1, int(cut.params.get("at", len(body) // 2)) - sent))
            with self._lock:  # counted as handed to the socket, before the client can see them
                self.bytes_served[key] += n
            if sent + n >= len(body):
                self._done(request)  # the client may start its next request as soon as this arrives
            await resp.write(bytes(body[sent : sent + n]))
            sent += n
            if slow is not None:
                await asyncio.sleep(float(slow.params.get("delay", 0.05)))
        await resp.write_eof()
        return resp
