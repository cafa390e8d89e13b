"""One error tree for the whole package.

```
HubMirrorError
├── InvalidInput                 400  bad repo id, revision, path, header, body
│   ├── InvalidRepoId
│   ├── InvalidRevision
│   ├── InvalidPath
│   ├── InvalidBundle                 an unsafe or damaged import bundle
│   └── PayloadTooLarge          413  a request body over its limit
├── NotFound                     404
│   ├── RepoNotFound                  X-Error-Code: RepoNotFound
│   ├── RevisionNotFound              X-Error-Code: RevisionNotFound
│   └── EntryNotFound                 X-Error-Code: EntryNotFound (+ X-Repo-Commit)
├── Conflict                     409  a ref moved under a concurrent writer
├── SyncBusy                     409  a sync of that repo is already running
├── MirrorFrozen                 409  the mirror is frozen: served, not synced
├── ResumeRefused                409  a resume onto bytes a failed fill sent unverified
├── Forbidden                    403  e.g. webhooks without a configured secret
├── InsufficientStorage          507  no disk space for a pull-through fill
├── Unauthorized                 401  a token that is malformed, unknown, revoked or expired
├── RateLimited                  429  with the Hub's RateLimit, RateLimit-Policy, Retry-After
├── GatedRepo                    401/403 X-Error-Code: GatedRepo
├── UpstreamError                502  the upstream answered something unusable
│   ├── UpstreamBadBody               a body of the wrong length (worth fetching again)
│   └── UpstreamUnavailable      503  unreachable, timing out, 5xx or 429 after retries
├── ConfigError                  bad settings file or environment
└── StoreError                   the blob store refused or failed
    ├── BlobNotFound                  no such blob (deleted meanwhile, or by hand)
    ├── DigestMismatch                bytes did not hash to what was promised
    └── SizeMismatch                  bytes were not as long as promised
```

The api layer turns each into the status, `X-Error-Code` and JSON body that
huggingface_hub's `hf_raise_for_status` reads; the CLI prints the message.
"""

from __future__ import annotations


class HubMirrorError(Exception):
    status: int = 500
    code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(HubMirrorError):
    status = 400
    code = "InvalidInput"


class InvalidRepoId(InvalidInput):
    code = "InvalidRepoId"


class InvalidRevision(InvalidInput):
    code = "InvalidRevision"


class InvalidPath(InvalidInput):
    code = "InvalidPath"


class InvalidBundle(InvalidInput):
    code = "InvalidBundle"


class PayloadTooLarge(InvalidInput):
    status = 413
    code = "PayloadTooLarge"


class NotFound(HubMirrorError):
    status = 404


class RepoNotFound(NotFound):
    code = "RepoNotFound"


class RevisionNotFound(NotFound):
    code = "RevisionNotFound"


class EntryNotFound(NotFound):
    code = "EntryNotFound"

    def __init__(self, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.commit = commit


class Conflict(HubMirrorError):
    status = 409
    code = "Conflict"


class SyncBusy(HubMirrorError):
    status = 409
    code = "SyncBusy"


class MirrorFrozen(HubMirrorError):
    status = 409
    code = "MirrorFrozen"


class ResumeRefused(HubMirrorError):
    status = 409
    code = "ResumeRefused"


class Forbidden(HubMirrorError):
    status = 403
    code = "Forbidden"


class InsufficientStorage(HubMirrorError):
    status = 507
    code = "InsufficientStorage"


class Unauthorized(HubMirrorError):
    status = 401
    code = "Unauthorized"


class RateLimited(HubMirrorError):
    status = 429
    code = None

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class GatedRepo(HubMirrorError):
    status = 403
    code = "GatedRepo"


class UpstreamError(HubMirrorError):
    status = 502
    code = "UpstreamError"


class UpstreamBadBody(UpstreamError):
    pass


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "UpstreamUnavailable"


class ConfigError(HubMirrorError):
    pass


class StoreError(HubMirrorError):
    pass


class BlobNotFound(StoreError):
    """No such blob. Served to a client (the catalog lists a file whose content is not in the
    store: found corrupt and removed by scrub, or deleted by hand), a 503 that names the state;
    never a 500."""

    status = 503
    code = "BlobMissing"


class DigestMismatch(StoreError):
    pass


class SizeMismatch(StoreError):
    pass
