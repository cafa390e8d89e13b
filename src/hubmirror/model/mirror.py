"""A declared mirror: which upstream repo to follow, which revisions and files, how often."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InvalidInput
from .names import RepoRef, RepoType, validate_repo_id, validate_revision

_INTERVAL = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
GLOB_CHARS = set("*?[]")


def is_pattern(revision: str) -> bool:
    return bool(set(revision) & GLOB_CHARS)


def validate_revision_pattern(revision: str) -> str:
    """A revision, or a glob over branch/tag names such as `v*`."""
    if is_pattern(revision):
        validate_revision(re.sub(r"[*?\[\]]", "x", revision))
        return revision
    return validate_revision(revision)


def interval_seconds(schedule: str) -> int | None:
    m = _INTERVAL.match(schedule.strip())
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def validate_schedule(schedule: str) -> str:
    secs = interval_seconds(schedule)
    if secs is not None:
        if secs < 10:
            raise InvalidInput(f"invalid schedule {schedule!r}: intervals must be at least 10s")
        return schedule.strip()
    if croniter.is_valid(schedule):
        return schedule.strip()
    raise InvalidInput(f"invalid schedule {schedule!r}: use an interval like 15m, 6h, 1d or a cron expression")


def next_run(schedule: str, after: datetime) -> datetime:
    """The next time a mirror with this schedule is due (naive UTC in, naive UTC out)."""
    secs = interval_seconds(schedule)
    if secs is not None:
        return after + timedelta(seconds=secs)
    it = croniter(schedule, after.replace(tzinfo=timezone.utc))
    nxt: datetime = it.get_next(datetime)
    return nxt.astimezone(timezone.utc).replace(tzinfo=None)


class MirrorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    repo: str
    type: RepoType = RepoType.MODEL
    revisions: list[str] = Field(default_factory=lambda: ["main"])
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    schedule: str = "1h"
    enabled: bool = True
    frozen: bool = False  # no more syncs; what is mirrored stays served
    keep_last: int | None = Field(None, ge=1, description="commits kept per branch by gc (None: all)")
    keep_tags: bool = True  # gc keeps every commit a tag pointed to
    # A private or gated upstream repo, read with the server's token, would be served to anyone who
    # can reach the mirror: refused unless the operator says so for this mirror.
    allow_gated: bool = False

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        try:
            return validate_repo_id(v)
        except InvalidInput as e:
            raise ValueError(e.message) from None

    @field_validator("revisions")
    @classmethod
    def _revs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("revisions must name at least one revision")
        try:
            return [validate_revision_pattern(r) for r in v]
        except InvalidInput as e:
            raise ValueError(e.message) from None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        try:
            return validate_schedule(v)
        except InvalidInput as e:
            raise ValueError(e.message) from None

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for g in v:
            if not g or "\x00" in g or len(g) > 1000:
                raise ValueError(f"invalid glob {g!r}")
        return v

    @property
    def ref(self) -> RepoRef:
        return RepoRef(self.type, self.repo)
