"""Git object ids as the Hub computes them: blob sha1, LFS pointers, tree and commit ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MiB and more in LFS


def git_blob_header(size: int) -> bytes:
    return b"blob %d\0" % size


def git_blob_sha1(data: bytes) -> str:
    h = hashlib.sha1(git_blob_header(len(data)))
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True, slots=True)
class TreeItem:
    """One entry of a git tree: `mode` is b'100644' for files and b'40000' for trees."""

    name: str
    mode: bytes
    oid: str


def git_tree_sha1(items: list[TreeItem]) -> str:
    """sha1 of a git tree object; git sorts entries by name, with a '/' appended for trees."""

    def key(it: TreeItem) -> bytes:
        n = it.name.encode()
        return n + b"/" if it.mode == b"40000" else n

    body = b"".join(
        it.mode + b" " + it.name.encode() + b"\0" + bytes.fromhex(it.oid) for it in sorted(items, key=key)
    )
    h = hashlib.sha1(b"tree %d\0" % len(body))
    h.update(body)
    return h.hexdigest()


def git_commit_sha1(tree: str, parents: list[str], author: str, timestamp: int, message: str) -> str:
    lines = [f"tree {tree}"] + [f"parent {p}" for p in parents]
    ident = f"{author} <{author}@hubmirror.local> {timestamp} +0000"
    lines += [f"author {ident}", f"committer {ident}", "", message.rstrip("\n") + "\n"]
    body = "\n".join(lines).encode()
    h = hashlib.sha1(b"commit %d\0" % len(body))
    h.update(body)
    return h.hexdigest()
