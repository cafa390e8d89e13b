"""Allow/deny patterns over repos: case-insensitive globs, or regexes written `re:...`.

A pattern is matched against `repo_id` and against `{models|datasets|spaces}/repo_id`, so
`meta-llama/*` covers every type and `datasets/acme/*` only datasets.
"""

from __future__ import annotations

import fnmatch
import re

from ..model.names import RepoRef


class Rules:
    def __init__(self, allow: list[str], deny: list[str]) -> None:
        self._allow = [self._compile(p) for p in allow]
        self._deny = [self._compile(p) for p in deny]

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        if pattern.startswith("re:"):
            return re.compile(pattern[3:], re.IGNORECASE)
        return re.compile(fnmatch.translate(pattern.lower()), re.IGNORECASE)

    def allows(self, ref: RepoRef) -> bool:
        names = (ref.repo_id, f"{ref.repo_type.plural}/{ref.repo_id}")
        if any(p.fullmatch(n) for p in self._deny for n in names):
            return False
        return any(p.fullmatch(n) for p in self._allow for n in names)
