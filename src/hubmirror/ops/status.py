"""What `hubmirror status` (and anything else that asks) says about the repos here: each declared
mirror against its upstream, the hosted and synced repos that are not declared, repos whose syncs
only ever failed, the newest sync attempt however it was started, post-sync hook results."""

from __future__ import annotations

from typing import Any

from ..catalog import Catalog
from ..errors import NotFound
from ..model.names import RepoRef
from ..sync.service import describe
from .notify import hook_results

KINDS = {"local": "hosted", "mirror": "synced", "proxy": "pulled through"}


def _iso(t: Any) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


def last_run(cat: Catalog, ref: RepoRef) -> dict[str, Any] | None:
    """The newest sync of the repo, whoever started it (the scheduler, the CLI, a lock, the API)."""
    runs = cat.runs(ref, limit=1)
    if not runs:
        return None
    r = runs[0]
    return {"trigger": r["trigger"], "status": r["status"], "started_at": _iso(r["started_at"]), "error": r["error"]}


def repo_status(cat: Catalog, only: RepoRef | None = None) -> tuple[list[dict[str, Any]], int]:
    """(one dict per repo, how many pulled-through repos were counted and not listed). Without
    `only`: every declared mirror, then every hosted or synced repo; with it, that repo and its
    sync history (NotFound if nothing here knows it)."""
    rows = cat.list_mirrors()
    if only is not None:
        rows = [m for m in rows if m.spec.ref == only]
        if not rows and cat.get_repo(only) is None and not cat.runs(only, limit=1):
            raise NotFound(f"{only} is neither a declared mirror nor a mirrored repo, and was never synced")
    out: list[dict[str, Any]] = []
    gone = cat.gone()
    for m in rows:
        repo = cat.get_repo(m.spec.ref)
        d = describe(m, cat.refs(repo) if repo else {})
        if repo is not None and repo.pk in gone:
            d["gone_upstream_since"] = gone[repo.pk][0].isoformat() + "Z"
        d["tags_repointed_upstream"] = [ev["detail"] for ev in cat.audit_events(m.spec.ref, "tag-repointed-upstream")]
        d["last_run"] = last_run(cat, m.spec.ref)
        if only is not None:
            d["history"] = cat.runs(m.spec.ref)
        out.append(d)
    declared = {m.spec.ref for m in rows}
    others = [r for r in cat.list_repos() if r.ref not in declared] if only is None else []
    if only is not None and not rows:
        repo = cat.get_repo(only)
        if repo is None:  # only failed syncs so far
            out.append({"repo_id": only.repo_id, "repo_type": only.repo_type.value, "declared": False,
                        "kind": "never mirrored", "private": False, "refs": {}, "last_run": last_run(cat, only),
                        "history": cat.runs(only)})
        others = [repo] if repo is not None else []
    proxied = 0
    for repo in others:
        if repo.origin == "proxy" and only is None:
            proxied += 1  # counted, not listed: a busy mirror pulls through thousands
            continue
        d = {"repo_id": repo.ref.repo_id, "repo_type": repo.ref.repo_type.value, "declared": False,
             "kind": KINDS.get(repo.origin, repo.origin), "private": repo.private,
             "refs": dict(sorted(cat.refs(repo).items())), "last_run": last_run(cat, repo.ref)}
        if repo.pk in gone:
            d["gone_upstream_since"] = gone[repo.pk][0].isoformat() + "Z"
        if only is not None:
            d["history"] = cat.runs(repo.ref)
        out.append(d)
    for d in out:  # post-sync hooks ([[hooks]]): the newest result of each; of one repo, its last 20 runs
        d["hooks"] = hook_results(cat, RepoRef.parse(d["repo_id"], d["repo_type"]), latest_only=only is None)
    return out, proxied
