"""The events the mirror tells the outside about (the `events` of a `[[notify]]` table)."""

from __future__ import annotations

EVENT_KINDS: dict[str, str] = {
    "commit-mirrored": "a declared or synced mirror got a new commit on a revision",
    "sync-failed": "a sync or a scheduled check of a mirror failed",
    "repo-gone": "the upstream says a mirrored repo no longer exists (once, until it comes back)",
    "tag-repointed": "the upstream re-pointed a tag; the mirror kept it where it was",
    "scrub-corrupt": "scrub found a stored blob whose bytes no longer match its sha256",
    "disk-low": "free space for blobs fell under the threshold (once per crossing)",
    "hook-failed": "a post-sync hook exited non-zero, timed out or could not start",
}

# `hubmirror notify test`: sent to every target (or one), whatever its `events` say
TEST_EVENT = "test"
