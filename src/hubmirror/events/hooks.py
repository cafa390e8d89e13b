"""Post-sync hooks (`[[hooks]]`): a read-only snapshot of a commit, the command run on it, its result.

The snapshot (`HUBMIRROR_SNAPSHOT`) is a folder holding the commit's files at their paths. On a
local store each file is a hard link to the stored blob (a symlink to it when the folder and the
store are on different filesystems): no byte is copied. Blobs are published read-only (0444) and
the snapshot's folders are made read-only (0555), so writing into a snapshot file or creating one
fails. A hook never runs as root (root ignores file modes): a server running as root runs it as
`user`, by default `nobody`, who cannot write a blob or the store's folders at all. After the hook
every linked blob is checked (size, mtime, mode); one that changed is hashed again and, if its
bytes no longer match, removed from the store (scrub --repair fetches it again) with a
scrub-corrupt event. On an object store the files are fetched into the snapshot when the commit
is at most `snapshot_max` bytes; otherwise the snapshot is skipped and HUBMIRROR_SNAPSHOT is empty
(HUBMIRROR_SNAPSHOT_SKIPPED says why).

The command is an argv list run without a shell, in its own process group, with a small
environment (never the server's: it holds the upstream token and database password), stdout and
stderr together, the last 4 KB kept. On timeout the whole group gets SIGTERM, then SIGKILL 2 s
later; whatever the hook left running in its group is killed when it ends.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import pwd
import shutil
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..catalog import Catalog
from ..catalog.events import MAX_OUTPUT, HookRunRow
from ..errors import HubMirrorError
from ..store import BlobStore
from .settings import HookSettings

# what a hook inherits from the server's environment; everything else it gets from `env`
_PASS_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR")
_KILL_GRACE = 2.0


class HookError(HubMirrorError):
    """A hook could not be set up (its user, its snapshot): recorded as its result `error`."""


@dataclass
class Outcome:
    result: str  # ok | failed | timeout | error
    exit_code: int | None
    duration: float
    output: str

    def summary(self) -> str:
        if self.result == "ok":
            return "ok"
        if self.result == "failed":
            return f"exit {self.exit_code}" if (self.exit_code or 0) >= 0 else f"killed by signal {-(self.exit_code or 0)}"
        return self.result


@dataclass
class HookUser:
    uid: int
    gid: int
    name: str
    home: str


def hook_user(hook: HookSettings) -> HookUser | None:
    """Who runs the hook: None for the server's own user. As root: `user`, by default nobody."""
    root = os.geteuid() == 0
    wanted = hook.user or ("nobody" if root else None)
    if wanted is None:
        return None
    try:
        pw = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except (KeyError, ValueError):
        raise HookError(f"hook {hook.key}: no user {wanted!r} on this system") from None
    if pw.pw_uid == 0:
        raise HookError(f"hook {hook.key}: a hook never runs as root")
    if pw.pw_uid == os.geteuid():
        return None
    if not root:
        raise HookError(f"hook {hook.key}: user = {wanted!r} needs the server to run as root (it runs as uid "
                        f"{os.geteuid()}); leave user out to run the hook as the server's user")
    return HookUser(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir)


def reachable(path: Path, user: HookUser) -> bool:
    """Can `user` reach `path` (search permission on every folder above it)?"""
    for d in [path, *path.parents]:
        st = os.stat(d)
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


# -- the snapshot ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    folder: Path | None  # None: skipped
    note: str = ""  # why it was skipped, or what is missing from it
    files: int = 0
    linked: dict[str, tuple[Path, int, int]] = field(default_factory=dict)  # sha256 -> (blob, size, mtime_ns)


def _safe_path(root: Path, path: str) -> Path:
    """`path` (already checked against the Hub's grammar by the catalog) under `root`, or HookError."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HookError(f"refusing the path {path!r} in a snapshot")
    return root.joinpath(*parts)


def build_snapshot(catalog: Catalog, store: BlobStore, run: HookRunRow, folder: Path, max_bytes: int) -> Snapshot:
    """The commit's files under `folder`, read-only (see the module's docstring)."""
    repo = catalog.get_repo(run.ref)
    if repo is None:
        raise HookError(f"{run.ref} is no longer in the catalog")
    entries = catalog.list_entries(repo, run.commit, recursive=True, files_only=True)
    local = store.local_path("0" * 64) is not None
    if not local:
        total = sum(e.size for e in entries)
        if total > max_bytes:
            return Snapshot(None, f"the commit holds {total} bytes, more than snapshot_max ({max_bytes}) fetched "
                                  f"from the object store for a hook")
    snap = Snapshot(folder)
    folder.mkdir(mode=0o755)
    missing: list[str] = []
    for e in entries:
        sha = e.sha256 or catalog.sha256_for_oid(e.oid)
        dst = _safe_path(folder, e.path)
        dst.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if sha is None:
            missing.append(e.path)
            continue
        if local:
            src = store.local_path(sha)
            try:
                assert src is not None
                st = os.stat(src)
                if st.st_mode & 0o222:  # published blobs are 0444; never leave one writable
                    os.chmod(src, 0o444)
                    st = os.stat(src)
                try:
                    os.link(src, dst)
                except OSError as err:
                    if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    os.symlink(src, dst)
            except FileNotFoundError:
                missing.append(e.path)
                continue
            snap.linked[sha] = (src, st.st_size, st.st_mtime_ns)
        else:
            try:
                with open(dst, "xb") as fh:
                    fh.writelines(store.read(sha))
            except HubMirrorError:
                dst.unlink(missing_ok=True)
                missing.append(e.path)
                continue
            os.chmod(dst, 0o444)
        snap.files += 1
    for dirpath, _dirs, _files in os.walk(folder, topdown=False):
        os.chmod(dirpath, 0o555)
    if missing:
        snap.note = f"{len(missing)} files whose content the store lacks are not in it: {', '.join(missing[:5])}"
    return snap


def check_blobs(store: BlobStore, snap: Snapshot) -> list[tuple[str, str]]:
    """After a hook: every linked blob is as it was (see the module docstring). Returns the
    (sha256, actual sha256) of each blob found modified, which has been removed from the store."""
    bad: list[tuple[str, str]] = []
    for sha, (path, size, mtime_ns) in snap.linked.items():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue  # gc removed it meanwhile
        if st.st_size == size and st.st_mtime_ns == mtime_ns and not st.st_mode & 0o222:
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() == sha:
            os.chmod(path, 0o444)
            continue
        store.delete(sha)
        bad.append((sha, h.hexdigest()))
    return bad


def remove_tree(root: Path) -> None:
    """Remove a hook's run folder. Folders are made writable again first; files never are (a
    hard link is the store's blob itself)."""
    if not root.exists():
        return
    for dirpath, dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(root, ignore_errors=True)


# -- running the command --------------------------------------------------------------------


def hook_env(hook: HookSettings, run: HookRunRow, *, endpoint: str, snapshot: Snapshot, changed_files: Path,
             user: HookUser | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _PASS_ENV}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    elif "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    env.update(hook.env)
    env.update(
        HUBMIRROR_HOOK=hook.key,
        HUBMIRROR_REPO=run.ref.repo_id,
        HUBMIRROR_REPO_TYPE=run.ref.repo_type.value,
        HUBMIRROR_REVISION=run.revision,
        HUBMIRROR_COMMIT=run.commit,
        HUBMIRROR_OLD_COMMIT=run.old_commit or "",
        HUBMIRROR_CHANGED_FILES=str(changed_files),
        HUBMIRROR_SNAPSHOT=str(snapshot.folder) if snapshot.folder is not None else "",
        HUBMIRROR_ENDPOINT=endpoint,
        HF_ENDPOINT=endpoint,
    )
    if snapshot.folder is None:
        env["HUBMIRROR_SNAPSHOT_SKIPPED"] = snapshot.note
    return env


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def run_command(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float,
                      user: HookUser | None) -> Outcome:
    """Run `argv` in a new session (its own process group), off the event loop's back."""
    t0 = time.monotonic()
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=env, cwd=str(cwd), start_new_session=True, close_fds=True, **extra)
    except OSError as e:
        return Outcome("error", None, time.monotonic() - t0, f"cannot start {argv[0]!r}: {e.strerror or e}")
    tail = bytearray()

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(1 << 16):
            tail.extend(chunk)
            del tail[:-MAX_OUTPUT * 2]

    reader = asyncio.create_task(pump())
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), _KILL_GRACE)
            except TimeoutError:
                _killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    except asyncio.CancelledError:
        _killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        reader.cancel()
        raise
    finally:
        _killpg(proc.pid, signal.SIGKILL)  # what it left running in its group
    try:
        await asyncio.wait_for(reader, _KILL_GRACE)
    except TimeoutError:  # a process that left the group still holds the pipe
        reader.cancel()
    duration = time.monotonic() - t0
    output = tail.decode("utf-8", "replace")[-MAX_OUTPUT:]
    if timed_out:
        return Outcome("timeout", None, duration, output)
    code = proc.returncode
    return Outcome("ok" if code == 0 else "failed", code, duration, output)
