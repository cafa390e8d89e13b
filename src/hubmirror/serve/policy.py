"""Who may read or write which repo (the `[access]` settings), and the Reader layer that asks it
first (DESIGN.md principle 9).

* Rules are tried in order; the first whose `repos` patterns match a repo decides, naming
  `anyone`, `authenticated`, `user:NAME` or `group:NAME` for `read` and `write`. A repo no rule
  matches is readable by anyone when `anonymous = "read"` (the single-box default), by any valid
  token when `"none"`; nobody writes it but admins.
* A private repo (hosted with `import --private`) and a gated or private upstream repo mirrored
  with `allow_gated` are readable only by the users and groups a matching rule names explicitly:
  `anyone` and `authenticated` do not open them.
* An admin token reads and writes everything; a token limited to repo patterns reaches nothing
  else, whatever its owner may do.
* A forbidden repo answers exactly like a missing one (`RepoNotFound`; 401 without a token, 404
  with one, the same body), and the check runs before the layers below look the repo up, so a
  denied client never causes an upstream request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..catalog import RepoRow
from ..errors import RepoNotFound
from ..model.access import Principal, Role
from ..model.entries import Commit, Entry
from ..model.names import RepoRef
from ..proxy.rules import Rules
from .base import FileHit, Reader, Snapshot
from .local import LocalReader
from .stream import Body


class Policy:
    def __init__(self, anonymous: str, rules: list[tuple[list[str], list[str], list[str]]]) -> None:
        """`rules`: (repo patterns, read subjects, write subjects), first match wins."""
        self.anonymous = anonymous  # "read" | "none"
        self._rules = [(Rules(pats, []), read, write) for pats, read, write in rules]
        self.open = anonymous == "read" and not rules  # nothing to decide: today's behaviour

    @classmethod
    def from_settings(cls, access: Any) -> Policy:
        return cls(access.anonymous, [(r.repos, r.read, r.write) for r in access.rules])

    def _subjects(self, ref: RepoRef, kind: str) -> list[str]:
        for pats, read, write in self._rules:
            if pats.allows(ref):
                return read if kind == "read" else write
        if kind == "write":
            return []
        return ["anyone"] if self.anonymous == "read" else ["authenticated"]

    def may(self, who: Principal, ref: RepoRef, kind: str, *, private: bool = False) -> bool:
        """May `who` read (kind "read") or write ("write") `ref`? `private`: the repo is private
        or gated, so only subjects named explicitly count."""
        if self.open and kind == "read" and not private and who.token_repos is None:
            return True  # no rules, anonymous reads: what the single box has always done
        if who.token_repos is not None and not _token_rules(who.token_repos).allows(ref):
            return False
        if who.role is Role.ADMIN:
            return True
        if who.anonymous and self.anonymous == "none":
            return False
        if kind == "write" and (who.role is None or not who.role.allows(Role.WRITE)):
            return False
        for s in self._subjects(ref, kind):
            if s == "anyone" and not private:
                return True
            if s == "authenticated" and not private and not who.anonymous:
                return True
            if s.startswith("user:") and who.user == s[5:]:
                return True
            if s.startswith("group:") and s[6:] in who.groups:
                return True
        return False


@functools.lru_cache(maxsize=1024)
def _token_rules(patterns: tuple[str, ...]) -> Rules:
    return Rules(list(patterns), [])


def denied(ref: RepoRef) -> RepoNotFound:
    """The answer for a repo `who` may not read: the very one a missing repo gets."""
    return RepoNotFound(f"Repository not found: {ref}")


class Guarded:
    """The Reader of one request: every question about a repo is asked of the policy first."""

    def __init__(self, inner: Reader, local: LocalReader, policy: Policy, who: Principal) -> None:
        self.inner = inner
        self.local = local
        self.policy = policy
        self.who = who

    async def authorize(self, ref: RepoRef) -> None:
        """RepoNotFound unless `who` may read `ref` (its patterns first, then, if the catalog holds
        it, whether it is private or gated): nothing below is asked before this passes."""
        if not self.policy.may(self.who, ref, "read"):
            raise denied(ref)
        repo = await self.local.repo_row(ref)
        if repo is not None:
            self._check_row(repo)

    def _check_row(self, repo: RepoRow) -> None:
        if (repo.private or repo.gated) and not self.policy.may(self.who, repo.ref, "read", private=True):
            raise denied(repo.ref)

    async def pick_route(self, candidates: list[RepoRef]) -> RepoRef:
        readable = [r for r in candidates if self.policy.may(self.who, r, "read")]
        return await self.inner.pick_route(readable or candidates)

    async def file(self, ref: RepoRef, revision: str, path: str) -> FileHit:
        await self.authorize(ref)
        hit = await self.inner.file(ref, revision, path)
        self._check_row(hit.repo)  # pull-through may have just learnt that it is gated
        return hit

    async def open_blob(self, hit: FileHit, *, head: bool, start: int = 0,
                        alive: Callable[[], bool] | None = None) -> Body:
        return await self.inner.open_blob(hit, head=head, start=start, alive=alive)

    async def snapshot(self, ref: RepoRef, revision: str) -> Snapshot:
        await self.authorize(ref)
        snap = await self.inner.snapshot(ref, revision)
        self._check_row(snap.repo)
        return snap

    async def refs(self, ref: RepoRef) -> dict[str, str]:
        await self.authorize(ref)
        return await self.inner.refs(ref)

    # a Snapshot is only ever obtained through `snapshot`, which checked it
    async def files(self, snap: Snapshot) -> list[Entry]:
        return await self.inner.files(snap)

    async def tree(self, snap: Snapshot, path: str, *, recursive: bool, after: str | None, limit: int) -> list[Entry]:
        return await self.inner.tree(snap, path, recursive=recursive, after=after, limit=limit)

    async def paths_info(self, snap: Snapshot, paths: list[str]) -> list[Entry]:
        return await self.inner.paths_info(snap, paths)

    async def commits(self, snap: Snapshot) -> list[Commit]:
        return await self.inner.commits(snap)

    async def commit_infos(self, repo: RepoRow, shas: list[str]) -> dict[str, Commit]:
        return await self.inner.commit_infos(repo, shas)

    async def card(self, snap: Snapshot) -> dict[str, Any] | None:
        return await self.inner.card(snap)

    async def extra_info(self, snap: Snapshot) -> dict[str, Any] | None:
        return await self.inner.extra_info(snap)

    def forget(self, ref: RepoRef | None = None) -> None:
        self.inner.forget(ref)
