"""The coordination seam: what several processes (one box, `--workers N`) or several replicas
(PostgreSQL) must agree on. Two drivers: `local.py` (flock in DATA/locks, one box) and `sql.py`
(PostgreSQL advisory locks and lease rows with fencing tokens, many replicas).

* `repo_lock(ref)`: at most one sync of a repo at a time.
* `gc_lock(exclusive)`: publishers (sync, import, fills) hold it shared from publishing a blob
  until the catalog references it; gc and purge hold it exclusive while they mark and sweep.
* `lease(name, ttl, info)`: one holder at a time for a while (the scheduler, the fill of one
  blob); the holder renews it (`renew()` is False once it was lost: a stale holder must stop),
  and it lapses `ttl` seconds after the last renewal if the holder died, so another takes over.
  `token` grows with every new holder (a fencing token). `info` tells others what the holder
  is doing (a fill's spool file: another worker of the same box streams from it).
* `interest(name)`: held (shared) by every process waiting for the holder of lease `name`;
  the holder asks `interested(name)` before it gives up work nobody of its own waits for.
* `counters`: rate-limit counters shared by every process that must count together.
"""

from __future__ import annotations

from typing import Protocol

from ..model.names import RepoRef
from .limits import RateCounters


class Lock(Protocol):
    def acquire(self, block: bool = True) -> bool: ...
    def release(self) -> None: ...
    def still_held(self) -> bool:
        """Is it still ours? (False once the session that held it is gone: do not publish.)"""

    def __enter__(self) -> Lock: ...
    def __exit__(self, *exc: object) -> None: ...


class Lease(Protocol):
    name: str
    token: int

    def renew(self) -> bool:
        """Extend it; False if it is no longer ours (it lapsed and another took it)."""

    def release(self) -> None: ...


class Coordinator(Protocol):
    @property
    def counters(self) -> RateCounters: ...

    def repo_lock(self, ref: RepoRef) -> Lock: ...
    def gc_lock(self, *, exclusive: bool = False) -> Lock: ...
    def lease(self, name: str, ttl: float, info: str = "") -> Lease | None:
        """Take the lease `name` if nobody holds it (or its holder's lapsed); None if held."""

    def held(self, name: str) -> bool:
        """Does anyone hold the lease `name` now?"""

    def holder_info(self, name: str) -> str | None:
        """The `info` of the lease `name`'s live holder; None if nobody holds it."""

    def interest(self, name: str) -> Lock:
        """A shared, non-blocking claim: "I wait for the holder of `name`"."""

    def interested(self, name: str) -> bool:
        """Does any process hold an interest in `name`?"""

    def close(self) -> None: ...
