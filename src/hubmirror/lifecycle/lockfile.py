"""Lock files: the exact files of the exact commits a project depends on, and drift checks.

```toml
# hubmirror lock file: every file of every locked revision, by sha256
version = 1

[[repos]]
repo_id = "sentence-transformers/all-MiniLM-L6-v2"
repo_type = "model"
revision = "main"
commit = "..."

[[repos.files]]
path = "config.json"
size = 612
sha256 = "..."
```
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..catalog import Catalog
from ..errors import InvalidInput, RepoNotFound
from ..model.names import (
    RepoRef,
    RepoType,
    is_commit_sha,
    validate_path,
    validate_repo_id,
    validate_revision,
)
from ..store.base import SHA256_RE

SKIP_DIRS = (".cache/huggingface/",)


@dataclass
class LockedFile:
    path: str
    size: int
    sha256: str


@dataclass
class LockedRepo:
    ref: RepoRef
    revision: str
    commit: str
    files: list[LockedFile] = field(default_factory=list)


def build(catalog: Catalog, wanted: list[tuple[RepoRef, str]]) -> list[LockedRepo]:
    out = []
    for ref, revision in wanted:
        repo = catalog.get_repo(ref)
        if repo is None:
            raise RepoNotFound(f"Repository not found: {ref} (sync, import or pull it through first)")
        commit = catalog.resolve(repo, revision)
        files = catalog.list_entries(repo, commit, recursive=True, files_only=True)
        missing = [f.path for f in files if not f.sha256]
        if missing:
            raise InvalidInput(f"{ref}@{revision}: the sha256 of {len(missing)} file(s) is not known yet "
                               f"(e.g. {missing[0]!r}): sync or download them through the mirror first")
        out.append(LockedRepo(ref, revision, commit, [LockedFile(f.path, f.size, str(f.sha256)) for f in files]))
    return out


def dumps(repos: list[LockedRepo]) -> str:
    doc: dict[str, Any] = {
        "version": 1,
        "repos": [
            {"repo_id": r.ref.repo_id, "repo_type": r.ref.repo_type.value, "revision": r.revision, "commit": r.commit,
             "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in r.files]}
            for r in repos
        ],
    }
    return "# hubmirror lock file: every file of every locked revision, by sha256\n" + tomli_w.dumps(doc)


def load(path: Path) -> list[LockedRepo]:
    try:
        doc = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"cannot read lock file {str(path)!r}: {e}") from None
    if doc.get("version") != 1 or not isinstance(doc.get("repos"), list):
        raise InvalidInput(f"lock file {str(path)!r}: expected version = 1 and [[repos]]")
    out = []
    for i, r in enumerate(doc["repos"]):
        where = f"lock file {str(path)!r}, repos[{i}]"
        try:
            ref = RepoRef(RepoType.parse(str(r.get("repo_type", "model"))), validate_repo_id(str(r["repo_id"])))
            revision = validate_revision(str(r["revision"]))
            commit = str(r["commit"])
            if not is_commit_sha(commit):
                raise InvalidInput(f"commit {commit!r} is not a 40-hex sha")
            files = []
            for f in r.get("files", []):
                p = validate_path(str(f["path"]))
                size, sha = f["size"], str(f["sha256"])
                if not isinstance(size, int) or size < 0 or not SHA256_RE.match(sha):
                    raise InvalidInput(f"file {p!r} has an invalid size or sha256")
                files.append(LockedFile(p, size, sha))
        except KeyError as e:
            raise InvalidInput(f"{where}: missing key {e}") from None
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e.message}") from None
        out.append(LockedRepo(ref, revision, commit, files))
    return out


@dataclass
class Drift:
    repo: str
    folder: str
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.modified or self.extra)


def verify_folder(locked: LockedRepo, folder: Path) -> Drift:
    """Compare a folder (a snapshot or local_dir download) with the lock: size, then sha256."""
    drift = Drift(str(locked.ref), str(folder))
    expected = {f.path: f for f in locked.files}
    present: set[str] = set()
    for dirpath, dirs, files in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        dirs[:] = [d for d in dirs if not (rel_dir == "." and d in (".cache", ".git"))]
        for name in files:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            present.add(rel)
    for rel in sorted(present - expected.keys()):
        drift.extra.append(rel)
    for rel, f in sorted(expected.items()):
        p = folder / rel
        if rel not in present or not p.is_file():
            drift.missing.append(rel)
            continue
        if p.stat().st_size != f.size or _sha256(p) != f.sha256:
            drift.modified.append(rel)
    return drift


def hf_cache_snapshot(cache: Path, locked: LockedRepo) -> Path:
    """Where an HF cache (HF_HUB_CACHE) keeps the snapshot of a locked commit."""
    name = f"{locked.ref.repo_type.plural}--{locked.ref.repo_id.replace('/', '--')}"
    return cache / name / "snapshots" / locked.commit


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
