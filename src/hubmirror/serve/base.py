"""The read stack's vocabulary: what a Reader answers and the protocol every layer speaks.

```
api/hub.py ──> Guarded (policy.py: who may read it; asked first)
                 └─> PullThrough (pullthrough.py: the upstream on a miss; only with a proxy)
                       └─> LocalReader (local.py: catalog + store)
```
Each layer holds the one below and speaks the same protocol, so no route knows which it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from ..catalog import RepoRow
from ..model.entries import Commit, Entry
from ..model.names import RepoRef
from .stream import Body


@dataclass(frozen=True, slots=True)
class FileHit:
    repo: RepoRow
    commit: str
    entry: Entry
    stale: str | None = None  # why this answer may be behind the upstream (offline fallback)


@dataclass(frozen=True, slots=True)
class Snapshot:
    repo: RepoRow
    commit: Commit
    stale: str | None = None


class Reader(Protocol):
    async def pick_route(self, candidates: list[RepoRef]) -> RepoRef: ...
    async def file(self, ref: RepoRef, revision: str, path: str) -> FileHit: ...
    async def open_blob(self, hit: FileHit, *, head: bool, start: int = 0,
                        alive: Callable[[], bool] | None = None) -> Body: ...
    async def snapshot(self, ref: RepoRef, revision: str) -> Snapshot: ...
    async def files(self, snap: Snapshot) -> list[Entry]: ...
    async def tree(self, snap: Snapshot, path: str, *, recursive: bool, after: str | None,
                   limit: int) -> list[Entry]: ...
    async def paths_info(self, snap: Snapshot, paths: list[str]) -> list[Entry]: ...
    async def commits(self, snap: Snapshot) -> list[Commit]: ...
    async def commit_infos(self, repo: RepoRow, shas: list[str]) -> dict[str, Commit]: ...
    async def refs(self, ref: RepoRef) -> dict[str, str]: ...
    async def card(self, snap: Snapshot) -> dict[str, Any] | None: ...
    async def extra_info(self, snap: Snapshot) -> dict[str, Any] | None: ...
    def forget(self, ref: RepoRef | None = None) -> None: ...


def parse_card(data: bytes) -> dict[str, Any] | None:
    """The YAML front matter of a README (model/dataset card metadata), if any."""
    text = data.decode("utf-8", "replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None
