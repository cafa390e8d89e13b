"""The Hub's grammar for repo ids, revisions and file paths, checked before anything touches
disk or database. Every function raises a subclass of InvalidInput naming what was wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from ..errors import InvalidInput, InvalidPath, InvalidRepoId, InvalidRevision


class RepoType(str, Enum):
    MODEL = "model"
    DATASET = "dataset"
    SPACE = "space"

    @property
    def plural(self) -> str:
        return self.value + "s"

    @property
    def url_prefix(self) -> str:
        """Prefix of file URLs: models have none."""
        return "" if self is RepoType.MODEL else self.plural + "/"

    @classmethod
    def parse(cls, value: str) -> RepoType:
        v = value.strip().lower()
        for t in cls:
            if v in (t.value, t.plural):
                return t
        raise InvalidInput(f"invalid repo type {value!r}: expected model, dataset or space")


_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,96}$")


def validate_repo_id(repo_id: str) -> str:
    """`name` or `namespace/name` with the rules of huggingface_hub's validate_repo_id."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidRepoId("invalid repo id: empty")
    if _has_control(repo_id):
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: contains a control character")
    parts = repo_id.split("/")
    if len(parts) > 2:
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: expected 'name' or 'namespace/name'")
    for part in parts:
        if not _NAME_RE.match(part):
            raise InvalidRepoId(
                f"invalid repo id {repo_id!r}: each part must be 1-96 characters of A-Z a-z 0-9 . _ -"
            )
        if part[0] in "-." or part[-1] in "-.":
            raise InvalidRepoId(f"invalid repo id {repo_id!r}: a part cannot start or end with '-' or '.'")
    if "--" in repo_id or ".." in repo_id:
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: '--' and '..' are forbidden")
    if repo_id.endswith(".git"):
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: cannot end with '.git'")
    return repo_id


COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REV_FORBIDDEN = set(" ~^:?*[\\")


def is_commit_sha(revision: str) -> bool:
    return bool(COMMIT_RE.match(revision))


def validate_revision(revision: str) -> str:
    """A branch, tag, `refs/...` name or 40-hex commit, with git's check-ref-format rules."""
    if not isinstance(revision, str) or not revision:
        raise InvalidRevision("invalid revision: empty")
    if len(revision) > 255:
        raise InvalidRevision("invalid revision: longer than 255 characters")
    if _has_control(revision):
        raise InvalidRevision(f"invalid revision {revision!r}: contains a control character")
    bad = sorted(set(revision) & _REV_FORBIDDEN)
    if bad:
        raise InvalidRevision(f"invalid revision {revision!r}: character {bad[0]!r} is not allowed")
    if revision.startswith("/") or revision.endswith("/") or "//" in revision:
        raise InvalidRevision(f"invalid revision {revision!r}: empty path component")
    if ".." in revision or "@{" in revision or revision == "@":
        raise InvalidRevision(f"invalid revision {revision!r}: '..' and '@{{' are not allowed")
    for comp in revision.split("/"):
        if comp.startswith(".") or comp.endswith(".lock") or comp.endswith("."):
            raise InvalidRevision(f"invalid revision {revision!r}: component {comp!r} is not allowed")
    return revision


def validate_branch(name: str) -> str:
    validate_revision(name)
    if is_commit_sha(name):
        raise InvalidRevision(f"invalid branch {name!r}: a branch cannot look like a commit sha")
    if name.startswith("refs/"):
        raise InvalidRevision(f"invalid branch {name!r}: give the short name, without 'refs/'")
    return name


MAX_PATH = 4096


def validate_path(path: str, *, allow_root: bool = False) -> str:
    """A relative, '/'-separated file path inside a repo, in NFC-agnostic UTF-8.

    Refuses absolute paths, '..' and '.' components, empty components, backslashes, NUL and
    control characters, and a `.git` component. Returns the path unchanged.
    """
    if not isinstance(path, str):
        raise InvalidPath("invalid path: not a string")
    if path == "" and allow_root:
        return path
    if path == "":
        raise InvalidPath("invalid path: empty")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidPath(f"invalid path: longer than {MAX_PATH} bytes")
    if _has_control(path):
        raise InvalidPath(f"invalid path {path!r}: contains NUL or a control character")
    if "\\" in path:
        raise InvalidPath(f"invalid path {path!r}: backslashes are not allowed")
    if path.startswith("/"):
        raise InvalidPath(f"invalid path {path!r}: must be relative, not absolute")
    if re.match(r"^[A-Za-z]:", path):
        raise InvalidPath(f"invalid path {path!r}: drive letters are not allowed")
    for comp in path.split("/"):
        if comp == "":
            raise InvalidPath(f"invalid path {path!r}: empty component")
        if comp in (".", ".."):
            raise InvalidPath(f"invalid path {path!r}: '.' and '..' components are not allowed")
        if comp.lower() == ".git":
            raise InvalidPath(f"invalid path {path!r}: '.git' is reserved")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidPath(f"invalid path {path!r}: not valid UTF-8") from e
    return path


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode category Cc, and the line separators


def _has_control(s: str) -> bool:
    return _CONTROL.search(s) is not None


@dataclass(frozen=True, slots=True)
class RepoRef:
    repo_type: RepoType
    repo_id: str

    def __str__(self) -> str:
        return f"{self.repo_type.url_prefix}{self.repo_id}"

    @classmethod
    def parse(cls, repo_id: str, repo_type: str | RepoType = RepoType.MODEL) -> RepoRef:
        t = repo_type if isinstance(repo_type, RepoType) else RepoType.parse(repo_type)
        return cls(t, validate_repo_id(repo_id))


def parse_repo_at_rev(spec: str, repo_type: str | RepoType = RepoType.MODEL) -> tuple[RepoRef, str | None]:
    """`ns/name@rev` -> (RepoRef, rev or None). A `datasets/` or `spaces/` prefix sets the type."""
    rev: str | None = None
    if "@" in spec:
        spec, rev = spec.split("@", 1)
        validate_revision(rev)
    for t in (RepoType.DATASET, RepoType.SPACE, RepoType.MODEL):
        if spec.startswith(t.plural + "/") and spec.count("/") == 2:
            return RepoRef.parse(spec[len(t.plural) + 1 :], t), rev
    return RepoRef.parse(spec, repo_type), rev
