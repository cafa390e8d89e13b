"""A bundle's manifest: its strict schema, how a violation is reported, and the cross-checks that run
before an import writes anything (see `bundle` for the archive around it).

Split out of bundle.py, which had grown past DESIGN.md's ~600 lines: what a manifest may say is one
concern, reading and writing the archive is another.

`parse_manifest` validates the bytes whole against `Manifest`: no unknown fields, no coercion ("ten"
is not a size, `true` is not 1), every repo id, path and ref name checked against the Hub's grammar.
`cross_check` then holds it against itself, the store and the catalog: every file's blob is listed in
the bundle or already stored, with the entry's size; an LFS entry's oid and pointer_size are those of
its pointer; every ref names a commit of its repo in the bundle or in the catalog. A regular file's oid
is the git blob sha1 of its bytes: `check_oid` compares it once they are hashed (as the bundle's blob
streams in, or by `check_stored_oids` for a blob the store already has).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
)
from pydantic_core import ErrorDetails

from ..catalog import Catalog
from ..errors import BlobNotFound, InvalidBundle, InvalidInput
from ..model.gitobj import git_blob_header, git_blob_sha1, lfs_pointer
from ..model.names import (
    RepoRef,
    RepoType,
    validate_path,
    validate_repo_id,
    validate_revision,
)
from ..store import BlobStore

MANIFEST = "hubmirror-bundle.json"
MAX_MANIFEST = 32 << 20
MAX_SIZE = (1 << 63) - 1  # the catalog's BigInteger
MAX_REPOS = 10_000
MAX_COMMITS = 100_000  # per repo
MAX_ENTRIES = 1_000_000  # per commit
MAX_REFS = 100_000  # per repo
MAX_BLOBS = 1_000_000
_REF_NAME = re.compile(r"^refs/(heads/.+|tags/.+|pr/[0-9]+|convert/.+)$")
_ENTRY_FIELDS = ("path", "type", "oid", "size", "sha256", "lfs", "pointer_size", "last_commit")

# -- the schema --------------------------------------------------------------------------------


def _rule(check: Callable[[Any], object]) -> AfterValidator:
    """A pydantic validator from one of our checks (which raise InvalidInput with a message)."""

    def run(v: Any) -> Any:
        try:
            check(v)
        except InvalidInput as e:
            raise ValueError(e.message) from None
        return v

    return AfterValidator(run)


def _hex(n: int) -> AfterValidator:
    pattern = re.compile(f"^[0-9a-f]{{{n}}}$")

    def check(v: str) -> None:
        if not pattern.match(v):
            raise InvalidInput(f"expected {n} lowercase hex digits")

    return _rule(check)


def _ref_name(v: str) -> None:
    validate_revision(v)
    if not _REF_NAME.match(v):
        raise InvalidInput("expected a full ref name: refs/heads/..., refs/tags/..., refs/pr/N or refs/convert/...")


def _version(v: int) -> None:
    if v != 1:
        raise InvalidInput("this hubmirror reads bundles of version 1")


def _iso_date(v: object) -> datetime:
    if not isinstance(v, str):
        raise ValueError("expected an ISO-8601 date string")  # noqa: TRY004 - pydantic reports ValueError
    try:
        d = datetime.fromisoformat(v)
        return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("not an ISO-8601 date") from None


Hex40 = Annotated[str, _hex(40)]
Sha256 = Annotated[str, _hex(64)]
Size = Annotated[int, Field(ge=0, le=MAX_SIZE)]
IsoDate = Annotated[datetime, PlainValidator(_iso_date)]
# [path, type, oid, size, sha256, lfs, pointer_size, last_commit], in the order of model.entries.Entry
EntryRow = tuple[
    Annotated[str, _rule(validate_path)], Literal["file", "directory"], Hex40, Size, Sha256 | None, bool,
    Size | None, Hex40 | None,
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class BundleCommit(_Strict):
    sha: Hex40
    parents: Annotated[list[Hex40], Field(max_length=1000)]
    tree: Hex40 | None
    title: str
    message: str
    author: str
    date: IsoDate
    entries: Annotated[list[EntryRow], Field(max_length=MAX_ENTRIES)]


class BundleRepo(_Strict):
    repo_type: Literal["model", "dataset", "space"]
    repo_id: Annotated[str, _rule(validate_repo_id)]
    origin: Literal["local", "mirror", "proxy"]
    commits: Annotated[list[BundleCommit], Field(max_length=MAX_COMMITS)]
    refs: Annotated[dict[Annotated[str, _rule(_ref_name)], Hex40], Field(max_length=MAX_REFS)]

    @property
    def ref(self) -> RepoRef:
        return RepoRef(RepoType(self.repo_type), self.repo_id)


class BundleBlob(_Strict):
    sha256: Sha256
    size: Size


class Manifest(_Strict):
    format: Literal["hubmirror-bundle"]
    version: Annotated[int, _rule(_version)]
    created_at: IsoDate
    repos: Annotated[list[BundleRepo], Field(max_length=MAX_REPOS)]
    blobs: Annotated[list[BundleBlob], Field(max_length=MAX_BLOBS)]


# -- reporting a violation ---------------------------------------------------------------------


def parse_manifest(data: bytes) -> Manifest:
    """Validate a manifest straight from its bytes; InvalidBundle names the field path of what is wrong."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        shown = "; ".join(_describe(err) for err in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidBundle(f"invalid bundle manifest: {shown}{more}") from None


def _describe(err: ErrorDetails) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] not in ("missing", "json_invalid") and (value is None or isinstance(value, str | int | float)):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            got = f"a number of {value.bit_length()} bits"
        else:
            got = repr(value[:60] + "..." if isinstance(value, str) and len(value) > 60 else value)
        if got not in msg:
            msg += f" (got {got})"
    return f"{_where(err['loc'])}: {msg}"


def _where(loc: tuple[int | str, ...]) -> str:
    """('repos', 0, 'commits', 1, 'entries', 3, 3) -> 'repos[0].commits[1].entries[3].size'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            in_entry = i >= 2 and loc[i - 2] == "entries" and isinstance(loc[i - 1], int)
            out += f".{_ENTRY_FIELDS[part]}" if in_entry and part < len(_ENTRY_FIELDS) else f"[{part}]"
        elif part == "[key]":
            out += " (the name)"
        elif i >= 1 and loc[i - 1] == "refs":
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or MANIFEST


# -- cross-checks, before anything is written --------------------------------------------------


@dataclass
class Plan:
    listed: dict[str, int]  # every blob the manifest lists -> size
    new: dict[str, int]  # the listed blobs the store lacks: what this import writes
    used: set[str]  # every blob a file entry uses
    # the blob of each regular (non-LFS) file -> {an oid entries record for it: where the first such entry is}.
    # Its bytes must hash to every one of them; until they are hashed, nothing proves any.
    oids: dict[str, dict[str, str]] = field(default_factory=dict)


def cross_check(m: Manifest, catalog: Catalog, store: BlobStore) -> Plan:
    """Everything the manifest claims that can be checked without reading a blob (see the module docstring)."""
    listed: dict[str, int] = {}
    for i, b in enumerate(m.blobs):
        if b.sha256 in listed:
            raise InvalidBundle(f"invalid bundle manifest: blobs[{i}]: {b.sha256} is listed twice")
        listed[b.sha256] = b.size
    stored: dict[str, int | None] = {}

    def stored_size(sha: str) -> int | None:
        if sha not in stored:
            info = store.stat(sha)
            stored[sha] = info.size if info else None
        return stored[sha]

    for i, b in enumerate(m.blobs):
        have = stored_size(b.sha256)
        if have is not None and have != b.size:
            raise InvalidBundle(f"invalid bundle manifest: blobs[{i}]: {b.sha256} is listed with {b.size} bytes, "
                                f"but this store's copy has {have}")
    plan = Plan(listed, {}, set())
    # a repo appears once per exported revision (`export acme/x@v1 acme/x@main`); its commits once per repo
    commits_of: dict[RepoRef, dict[str, BundleCommit]] = {}
    for ri, r in enumerate(m.repos):
        ref = r.ref
        known = commits_of.setdefault(ref, {})
        here: set[str] = set()
        for ci, c in enumerate(r.commits):
            at = f"repos[{ri}].commits[{ci}]"
            if c.sha in here:
                raise InvalidBundle(f"invalid bundle manifest: {at}: {ref} commit {c.sha} is listed twice")
            here.add(c.sha)
            if c.sha in known:
                if known[c.sha] != c:
                    raise InvalidBundle(f"invalid bundle manifest: {at}: {ref} commit {c.sha} is listed again "
                                        f"with other content")
                continue
            known[c.sha] = c
            _check_entries(c, f"{ref} commit {c.sha}", at, plan, stored_size)
    for ri, r in enumerate(m.repos):
        repo = catalog.get_repo(r.ref)
        for name, target in r.refs.items():
            if target not in commits_of[r.ref] and (repo is None or catalog.get_commit(repo, target) is None):
                raise InvalidBundle(f"invalid bundle manifest: {r.ref}: ref {name} points at {target}, a commit "
                                    f"neither in the bundle nor in this catalog (repos[{ri}].refs[{name!r}])")
    unused = [s for s in listed if s not in plan.used]
    if unused:
        raise InvalidBundle(f"invalid bundle manifest: {len(unused)} listed blob(s) are used by no entry, "
                            f"e.g. {unused[0]}")
    plan.new = {s: n for s, n in listed.items() if stored[s] is None}
    return plan


def _check_entries(c: BundleCommit, what: str, at: str, plan: Plan,
                   stored_size: Callable[[str], int | None]) -> None:
    """Every path once; a file's blob listed in the bundle or stored, with the entry's size; an LFS
    file's oid and pointer_size those of its pointer. Adds the blobs used, and the oids to prove, to `plan`."""
    paths: set[str] = set()
    for ei, (path, kind, oid, size, sha256, lfs, psize, _last) in enumerate(c.entries):
        named = f"{what}: {path!r} ({at}.entries[{ei}])"
        where = f"invalid bundle manifest: {named}"
        if path in paths:
            raise InvalidBundle(f"{where} is listed twice")
        paths.add(path)
        if kind == "directory":
            if sha256 is not None:
                raise InvalidBundle(f"{where}: a directory has no sha256")
            continue
        if sha256 is None:
            raise InvalidBundle(f"{where}: sha256 is null; a file needs the sha256 of its content")
        plan.used.add(sha256)
        blob = plan.listed.get(sha256)
        if blob is None:
            blob = stored_size(sha256)
        if blob is None:
            raise InvalidBundle(f"{where}: its blob {sha256} is neither in the bundle nor in this store")
        if blob != size:
            raise InvalidBundle(f"{where}: size {size} disagrees with its blob {sha256} of {blob} bytes")
        if not lfs:
            plan.oids.setdefault(sha256, {}).setdefault(oid, named)
            continue
        pointer = lfs_pointer(sha256, size)
        if oid != (want := git_blob_sha1(pointer)):
            raise InvalidBundle(f"{where}: oid {oid} is not the git blob sha1 of its LFS pointer, {want}")
        if psize != len(pointer):
            raise InvalidBundle(f"{where}: pointer_size {psize} is not the size of its LFS pointer, {len(pointer)}")


def check_oid(plan: Plan, sha256: str, actual: str) -> None:
    """InvalidBundle unless every regular file whose blob is `sha256` records `actual`, its bytes' git blob sha1."""
    for oid, named in plan.oids.get(sha256, {}).items():
        if oid != actual:
            raise InvalidBundle(f"invalid bundle manifest: {named}: oid {oid} is not the git blob sha1 of "
                                f"its bytes, {actual}")


def check_stored_oids(plan: Plan, store: BlobStore, blobs: Iterable[str]) -> None:
    """`check_oid` for blobs this store holds, each read once."""
    for sha in blobs:
        gone = InvalidBundle(f"bundle relies on blob {sha} of this store, which was removed during the import")
        info = store.stat(sha)
        if info is None:
            raise gone
        h = hashlib.sha1(git_blob_header(info.size))
        try:
            for chunk in store.read(sha):
                h.update(chunk)
        except BlobNotFound:
            raise gone from None
        check_oid(plan, sha, h.hexdigest())
