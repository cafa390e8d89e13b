"""The `[[notify]]` and `[[hooks]]` tables of the config file (fields of `Settings` in config.py)."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from .kinds import EVENT_KINDS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,199}$")


def display_url(url: str) -> str:
    """The URL as logs, the delivery log and messages show it: no credentials, no query (which may
    hold a key), no fragment."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{host}{port}{p.path or '/'}" + ("?..." if p.query else "")


def check_repo_patterns(v: list[str]) -> list[str]:
    """The grammar of the proxy rules: globs over repo_id or {models|datasets|spaces}/repo_id, or re:..."""
    for pat in v:
        if not pat:
            raise ValueError("empty repo pattern")
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as e:
                raise ValueError(f"invalid regex {pat!r}: {e}") from None
    return v


class NotifySettings(BaseModel):
    """An outgoing webhook: every event of `events` is POSTed to `url` as JSON, signed with `secret`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(repr=False, description="http:// or https:// URL; user:password@ in it is sent as Basic "
                                             "auth; neither they nor the query are ever logged")
    name: str | None = Field(None, description="names the target in the delivery log (default: the URL without "
                                               "credentials or query)")
    events: list[str] = Field(default_factory=lambda: list(EVENT_KINDS), description="default: all of them")
    secret: SecretStr | None = Field(None, description="key of the X-Hubmirror-Signature HMAC-SHA256 of the body")
    attempts: int = Field(6, ge=1, le=20, description="attempts in all before a delivery is given up")
    backoff: float = Field(20.0, gt=0, le=3600,
                           description="seconds before the second attempt, doubled each time (6 attempts: ~10 min)")
    timeout: float = Field(10.0, gt=0, le=300, description="seconds one attempt may take")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            p = urlsplit(v)
            p.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise ValueError(f"notify url {v!r}: {e}") from None
        if p.scheme not in ("http", "https") or not p.hostname:
            raise ValueError(f"notify url must be an http:// or https:// URL, got {display_url(v)!r}")
        if p.fragment:
            raise ValueError(f"notify url must not have a #fragment: {display_url(v)!r}")
        if any(ord(ch) < 33 or ord(ch) == 127 for ch in v):
            raise ValueError(f"notify url must not contain spaces or control characters: {display_url(v)!r}")
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e not in EVENT_KINDS]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r}; known: {', '.join(EVENT_KINDS)}")
        if not v:
            raise ValueError("events is empty: leave it out for all events")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _name(self) -> NotifySettings:
        if self.name is None:
            self.name = display_url(self.url)[:200]
        elif not _NAME.match(self.name):
            raise ValueError(f"notify name {self.name!r}: letters, digits and ._@:/+- (at most 200)")
        return self

    @property
    def key(self) -> str:
        assert self.name is not None
        return self.name


class HookSettings(BaseModel):
    """A command run after a mirror gets a new commit, on a read-only snapshot of that commit."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1, description='argv, run without a shell: ["/usr/local/bin/check", "-v"]')
    name: str | None = Field(None, description="names the hook in status (default: the program's file name)")
    repos: list[str] = Field(default_factory=lambda: ["*"], description="patterns like the proxy rules: acme/*")
    timeout: float = Field(600.0, gt=0, le=7 * 86400, description="seconds; then its process group is killed")
    check: bool = Field(False, description="the hook is a check (recorded with its results)")
    user: str | None = Field(None, description="run as this user (the server must be root; as root the default "
                                               "is nobody: a hook never runs as root)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables for the command")
    snapshot_max: ByteSize = Field(ByteSize(1 << 30), ge=0,
                                   description="object store: a commit up to this size is fetched into the "
                                               "snapshot; a larger one is skipped (HUBMIRROR_SNAPSHOT empty)")

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, v: Any) -> Any:
        if isinstance(v, str):  # pydantic reports ValueError (not TypeError) as a validation error
            raise ValueError(  # noqa: TRY004
                'command is a list of arguments run without a shell, e.g. command = ["/usr/local/bin/check", '
                '"--strict"] (for a shell line: ["/bin/sh", "-c", "..."])')
        if isinstance(v, list):
            for arg in v:
                if isinstance(arg, str) and "\0" in arg:
                    raise ValueError("command arguments must not contain NUL")
            if v and (not isinstance(v[0], str) or not v[0]):
                raise ValueError("command[0] (the program) must not be empty")
        return v

    @field_validator("repos")
    @classmethod
    def _repos(cls, v: list[str]) -> list[str]:
        return check_repo_patterns(v)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and v in ("root", "0"):
            raise ValueError("a hook never runs as root (it could write into the store's blobs)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"env: {k!r} is not a variable name")
            if k.startswith("HUBMIRROR_"):
                raise ValueError(f"env: {k} is set by hubmirror itself")
            if "\0" in val:
                raise ValueError(f"env: {k} must not contain NUL")
        return v

    @model_validator(mode="after")
    def _name(self) -> HookSettings:
        if self.name is None:
            self.name = os.path.basename(self.command[0])[:64] or "hook"
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", self.name):
            raise ValueError(f"hook name {self.name!r}: letters, digits and ._- (at most 64); set name = ...")
        return self

    @property
    def key(self) -> str:
        assert self.name is not None
        return self.name


def unique_names(v: list[Any], what: str) -> list[Any]:
    """Each [[notify]] and each [[hooks]] table is known by its name in the catalog: no two alike."""
    seen: set[str] = set()
    for item in v:
        if item.key in seen:
            raise ValueError(f"two [[{what}]] tables are named {item.key!r}: give each a distinct name = ...")
        seen.add(item.key)
    return v
