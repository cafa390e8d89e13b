"""Tree entries and commits, as the Hub lists them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .gitobj import TreeItem, git_tree_sha1


@dataclass(frozen=True, slots=True)
class Entry:
    """A file or directory of one commit.

    For files `oid` is the git blob sha1 of what git stores (the pointer file for LFS files),
    `sha256` is the sha256 of the content (the blob store key) and `size` the content size.
    For directories `oid` is the git tree sha1 and `size` is 0.
    """

    path: str
    type: str  # "file" | "directory"
    oid: str
    size: int = 0
    sha256: str | None = None
    lfs: bool = False
    pointer_size: int | None = None
    last_commit: str | None = None

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    def etag(self) -> str:
        """What a resolve answer names this file by: sha256 for LFS, git blob sha1 otherwise."""
        return self.sha256 if self.lfs and self.sha256 else self.oid

    def to_hub(self, last_commit: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.type == "directory":
            d: dict[str, Any] = {"type": "directory", "oid": self.oid, "size": 0, "path": self.path}
        else:
            d = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
            if self.lfs:
                d["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        if last_commit is not None:
            d["lastCommit"] = last_commit
        return d


@dataclass(frozen=True, slots=True)
class Commit:
    sha: str
    parents: list[str] = field(default_factory=list)
    title: str = ""
    message: str = ""
    author: str = "hubmirror"
    date: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    tree: str | None = None

    def to_hub(self) -> dict[str, Any]:
        return {
            "id": self.sha,
            "title": self.title,
            "message": self.message,
            "date": hub_time(self.date),
            "authors": [{"user": self.author, "avatar": None}],
        }


def hub_time(dt: datetime) -> str:
    """The only timestamp shape huggingface_hub parses: YYYY-MM-DDTHH:MM:SS.fffZ."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def with_directories(files: list[Entry]) -> tuple[list[Entry], str]:
    """Add a directory entry (with its git tree sha1) for every folder; return them and the root tree sha1."""
    children: dict[str, list[TreeItem]] = {"": []}
    subdirs: dict[str, list[str]] = {"": []}
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in children:
                children[d] = []
                subdirs[d] = []
                subdirs["/".join(parts[: i - 1])].append(d)
        children[f.parent].append(TreeItem(parts[-1], b"100644", f.oid))
    tree_oid: dict[str, str] = {}
    # deepest folders first so that a parent can name its children's tree ids
    for d in sorted(children, key=lambda p: (p != "") + p.count("/"), reverse=True):
        items = children[d] + [TreeItem(s.rsplit("/", 1)[-1], b"40000", tree_oid[s]) for s in subdirs[d]]
        tree_oid[d] = git_tree_sha1(items)
    dirs = [Entry(path=d, type="directory", oid=o) for d, o in tree_oid.items() if d]
    return files + dirs, tree_oid[""]
