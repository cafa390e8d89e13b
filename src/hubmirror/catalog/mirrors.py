"""Catalog queries for declared mirrors and sync history (mixed into Catalog)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..model.mirror import MirrorSpec
from ..model.names import RepoRef
from . import schema as t
from .engine import insert, write
from .schema import utcnow


@dataclass(frozen=True, slots=True)
class MirrorRow:
    spec: MirrorSpec
    source: str
    next_run_at: datetime | None
    last_check_at: datetime | None
    last_sync_at: datetime | None
    upstream: dict[str, str]
    last_error: str | None
    last_error_at: datetime | None


def _mirror(r: Any) -> MirrorRow:
    return MirrorRow(
        spec=MirrorSpec.model_validate_json(r.spec),
        source=r.source,
        next_run_at=r.next_run_at,
        last_check_at=r.last_check_at,
        last_sync_at=r.last_sync_at,
        upstream=json.loads(r.upstream) if r.upstream else {},
        last_error=r.last_error,
        last_error_at=r.last_error_at,
    )


class MirrorQueries:
    engine: sa.Engine

    def _where(self, ref: RepoRef) -> Any:
        return sa.and_(t.mirrors.c.repo_type == ref.repo_type.value, t.mirrors.c.repo_id == ref.repo_id)

    def upsert_mirror(self, spec: MirrorSpec, source: str) -> None:
        """Declare a mirror, or replace the spec and source of the one declared (its state stays)."""
        with write(self.engine) as c:
            ins = insert(c, t.mirrors).values(repo_type=spec.type.value, repo_id=spec.repo,
                                              spec=spec.model_dump_json(), source=source, created_at=utcnow())
            c.execute(ins.on_conflict_do_update(index_elements=["repo_type", "repo_id"],
                                                set_={"spec": ins.excluded.spec, "source": ins.excluded.source}))

    def remove_mirror(self, ref: RepoRef) -> bool:
        with write(self.engine) as c:
            return bool(c.execute(sa.delete(t.mirrors).where(self._where(ref))).rowcount)

    def get_mirror(self, ref: RepoRef) -> MirrorRow | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.mirrors).where(self._where(ref))).first()
        return _mirror(r) if r else None

    def list_mirrors(self) -> list[MirrorRow]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.mirrors).order_by(t.mirrors.c.repo_type, t.mirrors.c.repo_id)).all()
        return [_mirror(r) for r in rows]

    def prune_config_mirrors(self, keep: set[RepoRef]) -> None:
        """Forget mirrors that came from the config file and are no longer in it."""
        for m in self.list_mirrors():
            if m.source == "config" and m.spec.ref not in keep:
                self.remove_mirror(m.spec.ref)

    def update_mirror_state(self, ref: RepoRef, **values: Any) -> None:
        if "upstream" in values and values["upstream"] is not None:
            values["upstream"] = json.dumps(values["upstream"])
        with write(self.engine) as c:
            c.execute(sa.update(t.mirrors).where(self._where(ref)).values(**values))

    # -- sync runs --------------------------------------------------------------------------

    def start_run(self, ref: RepoRef, trigger: str) -> int:
        with write(self.engine) as c:
            res = c.execute(
                sa.insert(t.sync_runs).values(
                    repo_type=ref.repo_type.value, repo_id=ref.repo_id, trigger=trigger, status="running",
                    started_at=utcnow(),
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def close_interrupted_runs(self, ref: RepoRef) -> int:
        """Runs still marked running while we hold the repo's sync lock died (kill -9, power loss)."""
        with write(self.engine) as c:
            return int(c.execute(
                sa.update(t.sync_runs)
                .where(t.sync_runs.c.repo_type == ref.repo_type.value, t.sync_runs.c.repo_id == ref.repo_id,
                       t.sync_runs.c.status == "running")
                .values(status="interrupted", error="the process running it stopped")
            ).rowcount)

    def finish_run(self, run_id: int, **values: Any) -> None:
        if "commits" in values:
            values["commits"] = json.dumps(values["commits"])
        with write(self.engine) as c:
            c.execute(sa.update(t.sync_runs).where(t.sync_runs.c.id == run_id).values(finished_at=utcnow(), **values))

    def runs(self, ref: RepoRef, limit: int = 20) -> list[dict[str, Any]]:
        q = (
            sa.select(t.sync_runs)
            .where(t.sync_runs.c.repo_type == ref.repo_type.value, t.sync_runs.c.repo_id == ref.repo_id)
            .order_by(t.sync_runs.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as c:
            out = []
            for r in c.execute(q).all():
                d = dict(r._mapping)
                d["commits"] = json.loads(d["commits"]) if d["commits"] else {}
                out.append(d)
            return out
