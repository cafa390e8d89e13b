"""The coordination seam: what several processes (one box, `--workers N`) or several replicas
(PostgreSQL) must agree on. Two drivers: `local.py` (flock in DATA/locks, one box) and `sql.py`
(PostgreSQL advisory locks and lease rows with fencing tokens, many replicas).

* `repo_lock(ref)`: at most one sync of a repo at a time.
* `gc_lock(exclusive)`: publishers (sync, import, fills) hold it shared from publishing a blob
  until the catalog references it; gc and purge hold it exclusive while they mark and sweep.
* `lease(name, ttl)`: one holder at a time for a while (the scheduler, the fill of one blob);
  the holder renews it (`renew()` is False once it was lost: a stale holder must stop), and it
  lapses `ttl` seconds after the last renewal if the holder died, so another takes over.
  `token` grows with every new holder (a fencing token).
* `counters`: rate-limit counters shared by every process that must count together.
"""

from __future__ import annotations

from typing import Protocol

from ..model.names import RepoRef
from .limits import RateCounters


class Lock(Protocol):
    def acquire(self, block: bool = True) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> Lock: ...
    def __exit__(self, *exc: object) -> None: ...


class Lease(Protocol):
    name: str
    token: int

    def renew(self) -> bool:
        """Extend it; False if it is no longer ours (it lapsed and another took it)."""

    def release(self) -> None: ...


class Coordinator(Protocol):
    counters: RateCounters

    def repo_lock(self, ref: RepoRef) -> Lock: ...
    def gc_lock(self, *, exclusive: bool = False) -> Lock: ...
    def lease(self, name: str, ttl: float) -> Lease | None:
        """Take the lease `name` if nobody holds it (or its holder's lapsed); None if held."""

    def held(self, name: str) -> bool:
        """Does anyone hold the lease `name` now?"""

    def close(self) -> None: ...
