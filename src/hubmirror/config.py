"""Settings: defaults < config file (TOML) < HUBMIRROR_* environment < command-line flags.

Loaded once by the entry point and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .coord.limits import parse_bandwidth, parse_rate
from .errors import ConfigError
from .events.settings import HookSettings, NotifySettings, unique_names
from .hub import HubClient, Limits, Shared
from .model.access import validate_subject
from .model.mirror import MirrorSpec


def _http_url(v: str | None, name: str) -> str | None:
    if v is None or v == "":
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL, got {v!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{name} must not carry a query, fragment or credentials: {v!r}")
    return v.rstrip("/")


class ProxySettings(BaseModel):
    """Pull-through of repos that are neither hosted here nor declared mirrors."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    offline: bool = Field(False, description="never contact the upstream; serve what is cached")
    allow: list[str] = Field(default_factory=lambda: ["*"], description="repos that may be pulled through")
    deny: list[str] = Field(default_factory=list)
    cache_allow: list[str] = Field(default_factory=lambda: ["*"], description="proxied repos whose files are kept")
    cache_deny: list[str] = Field(default_factory=list)
    branch_ttl: float = Field(600.0, ge=0, description="seconds a branch's commit is reused before asking again")
    negative_ttl: float = Field(60.0, ge=0, description="seconds a RepoNotFound/RevisionNotFound is remembered")
    max_bytes: ByteSize | None = Field(None, description="disk budget for pulled-through files (LRU eviction)")
    min_free: ByteSize = Field(ByteSize(1 << 30), description="free disk space to keep; checked before each fill")
    allow_gated: bool = Field(False, description="serve private/gated upstream repos to anyone (off: never)")
    retries: int = Field(1, ge=0, le=10, description="upstream retries on a client's request path (fail fast)")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to reach the upstream before serving stale")
    api_timeout: float = Field(10.0, gt=0, le=600,
                               description="seconds a metadata call a client waits on may take before stale is served")
    breaker_cooldown: float = Field(15.0, gt=0, le=3600,
                                    description="seconds an unreachable upstream is not asked again (stale answers)")
    orphan_grace: float = Field(5.0, ge=0, le=600, description="seconds a fill goes on after its last client left")
    resume_guard: float = Field(7 * 86400.0, ge=0,
                                description="seconds a resume of a blob sent unverified by a failed fill is refused")

    @field_validator("allow", "deny", "cache_allow", "cache_deny")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return _check_patterns(v)


def _check_patterns(v: list[str]) -> list[str]:
    for pat in v:
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as e:
                raise ValueError(f"invalid regex {pat!r}: {e}") from None
        elif not pat:
            raise ValueError("empty pattern")
    return v


def _check_networks(v: list[str]) -> list[str]:
    for net in v:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"invalid address or CIDR {net!r} (e.g. 10.0.0.0/8, 127.0.0.1, ::1)") from None
    return v


class AccessRule(BaseModel):
    """Who may read and write the repos its patterns match (first matching rule wins)."""

    model_config = ConfigDict(extra="forbid")

    repos: list[str] = Field(min_length=1, description="patterns like the proxy rules: acme/*, datasets/acme/*, re:...")
    read: list[str] = Field(default_factory=list, description="anyone, authenticated, user:NAME, group:NAME")
    write: list[str] = Field(default_factory=list)

    @field_validator("repos")
    @classmethod
    def _repos(cls, v: list[str]) -> list[str]:
        return _check_patterns(v)

    @field_validator("read", "write")
    @classmethod
    def _subjects(cls, v: list[str]) -> list[str]:
        return [validate_subject(x) for x in v]


class AccessSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anonymous: Literal["read", "none"] = Field("read", description="what clients without a token get")
    rules: list[AccessRule] = Field(default_factory=list)
    allow_ips: list[str] = Field(default_factory=list, description="CIDRs that may connect at all (empty: any)")
    admin_allow_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"],
                                       description="CIDRs that may use the admin API")

    @field_validator("allow_ips", "admin_allow_ips")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        return _check_networks(v)


class LimitSettings(BaseModel):
    """Per token (or per client address, for requests without a token)."""

    model_config = ConfigDict(extra="forbid")

    api: str | None = Field(None, description='API calls, e.g. "1000/5m"')
    resolvers: str | None = Field(None, description='file requests (resolve HEAD/GET), e.g. "3000/5m"')
    anonymous_api: str | None = Field(None, description="for clients without a token (default: api)")
    anonymous_resolvers: str | None = Field(None, description="for clients without a token (default: resolvers)")
    bandwidth: str | None = Field(None, description='bytes per second for all connections of one token, "50MiB/s"')
    connection_bandwidth: str | None = Field(None, description="bytes per second for one connection")
    max_keys: int = Field(100_000, ge=1000, description="tokens and addresses counted at once, at most")

    @field_validator("api", "resolvers", "anonymous_api", "anonymous_resolvers")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rate(v)
        return v

    @field_validator("bandwidth", "connection_bandwidth")
    @classmethod
    def _bw(cls, v: str | None) -> str | None:
        if v is not None:
            parse_bandwidth(v)
        return v


class UiSettings(BaseModel):
    """The web UI at / (src/hubmirror/ui/): sign-in sessions are signed cookies."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve the web UI at / and /-/")
    session_secret: SecretStr | None = Field(
        None, description="key that signs UI sessions; the same on every replica (default: a random key kept in "
                          "DATA/ui-session.key)")
    session_ttl: float = Field(12 * 3600.0, ge=60, le=30 * 86400, description="seconds a UI sign-in lasts")

    @field_validator("session_secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("ui.session_secret must be at least 32 characters (e.g. openssl rand -hex 32)")
        return v


class S3Settings(BaseModel):
    """Where an `s3://bucket/prefix` store_url lives; unset values come from the standard AWS
    environment variables and files (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION...)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(None, description="e.g. http://minio:9000 (default: AWS)")
    public_endpoint: str | None = Field(
        None, description="the endpoint as clients reach it, for redirect URLs (default: endpoint)")
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    addressing: Literal["path", "virtual"] = Field("path", description="path-style suits MinIO, SeaweedFS, Ceph")
    presign_expires: int = Field(300, ge=10, le=7 * 86400, description="seconds a redirect URL stays valid")
    part_size: ByteSize = Field(ByteSize(16 << 20), ge=5 << 20, description="multipart upload part size")

    @field_validator("endpoint", "public_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _http_url(v, f"s3.{info.field_name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HUBMIRROR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data: Path = Field(Path("hubmirror-data"), description="data directory: catalog, blobs, logs")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for every interface)")
    port: int = Field(8090, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64,
                         description="server processes sharing the port on this box (1: no supervisor process)")
    upstream: str = Field("https://huggingface.co", description="Hub-compatible upstream (or another hubmirror)")
    upstream_token: SecretStr | None = Field(None, description="token sent to the upstream, never logged")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite in the data dir")
    store_url: str | None = Field(None, description="blob store: a folder (default DATA/blobs) or s3://bucket/prefix")
    store_redirect: bool = Field(False, description="answer GETs of an object store's blobs with a presigned 302")
    s3: S3Settings = Field(default_factory=S3Settings)
    public_url: str | None = Field(None, description="URL clients use to reach this server (for links)")
    trusted_proxies: list[str] = Field(default_factory=list,
                                       description="addresses (CIDR) whose X-Forwarded-* headers are believed")
    trust_forwarded_headers: bool | None = Field(None, description="replaced by trusted_proxies")
    log_level: str = Field("info", pattern=r"^(?i)(debug|info|warning|error)$")
    access_log: bool = Field(True, description="one log line per request")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line, with request ids")

    # upstream client
    upstream_max_concurrency: int = Field(8, ge=1, le=256, description="upstream file downloads in flight")
    upstream_api_concurrency: int = Field(8, ge=1, le=256, description="upstream metadata calls in flight")
    upstream_max_json: ByteSize = Field(ByteSize(16 << 20), ge=1024, description="largest upstream JSON answer")
    upstream_max_entries: int = Field(100_000, ge=1, description="most files and folders an upstream commit may list")
    upstream_max_pages: int = Field(1000, ge=1, description="most pages of one upstream listing")
    upstream_api_timeout: float = Field(60.0, gt=0, description="seconds one upstream metadata call may take")
    upstream_min_rate: ByteSize = Field(ByteSize(8 << 10), ge=0, description="bytes/s a file body must average")
    upstream_slow_window: float = Field(30.0, gt=0, le=3600, description="seconds over which min_rate is judged")
    upstream_retries: int = Field(5, ge=0, le=20)
    upstream_backoff: float = Field(1.0, gt=0, le=60, description="base of the exponential backoff, seconds")
    upstream_read_timeout: float = Field(60.0, gt=0)

    # declared mirrors and sync
    mirrors: list[MirrorSpec] = Field(default_factory=list, description="[[mirrors]] tables")
    sync_parallel: int = Field(4, ge=1, le=64, description="files downloaded at once by one sync")
    max_concurrent_syncs: int = Field(2, ge=1, le=64)
    scheduler_tick: float = Field(5.0, gt=0, le=3600, description="how often the scheduler looks for due mirrors")
    lease_ttl: float = Field(15.0, ge=1, le=600, description="seconds after which the leases of a process that "
                             "died (a fill, the scheduler) are taken over by another (PostgreSQL; on one box at once)")
    webhook_secret: SecretStr | None = Field(None, description="X-Webhook-Secret for POST /api/hooks/hub")

    # events (src/hubmirror/events/): outgoing webhooks and post-sync hooks
    notify: list[NotifySettings] = Field(default_factory=list, description="[[notify]] tables: outgoing webhooks")
    hooks: list[HookSettings] = Field(default_factory=list,
                                      description="[[hooks]] tables: commands run after a mirror gets a new commit")
    disk_low: ByteSize | None = Field(None, description="free blob space under which disk-low fires "
                                                        "(default: 2 x proxy.min_free)")

    @field_validator("notify")
    @classmethod
    def _notify_names(cls, v: list[NotifySettings]) -> list[NotifySettings]:
        return unique_names(v, "notify")

    @field_validator("hooks")
    @classmethod
    def _hook_names(cls, v: list[HookSettings]) -> list[HookSettings]:
        return unique_names(v, "hooks")

    proxy: ProxySettings = Field(default_factory=ProxySettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    ui: UiSettings = Field(default_factory=UiSettings)

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        out = _http_url(v, "upstream")
        if out is None:
            raise ValueError("upstream must not be empty")
        return out

    @field_validator("public_url")
    @classmethod
    def _public(cls, v: str | None) -> str | None:
        return _http_url(v, "public_url")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        return _check_networks(v)

    @field_validator("trust_forwarded_headers")
    @classmethod
    def _replaced(cls, v: bool | None) -> bool | None:
        if v is not None:
            raise ValueError("replaced by trusted_proxies: list the addresses of your reverse proxies "
                             '(e.g. trusted_proxies = ["127.0.0.1"]); forwarded headers from anyone else are ignored')
        return v

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data / 'catalog.sqlite3').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data / "blobs"

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        parts = urlsplit(v)
        if parts.scheme == "s3":
            if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
                raise ValueError(f"store_url {v!r}: expected s3://bucket[/prefix] (credentials go in [s3])")
            return v.rstrip("/")
        if parts.scheme in ("", "file"):
            return v
        raise ValueError(f"store_url {v!r}: expected a folder or s3://bucket[/prefix]")

    @property
    def upstream_limits(self) -> Limits:
        return Limits(max_json=int(self.upstream_max_json), max_entries=self.upstream_max_entries,
                      max_pages=self.upstream_max_pages, api_timeout=self.upstream_api_timeout,
                      min_rate=int(self.upstream_min_rate), slow_window=self.upstream_slow_window)

    def upstream_shared(self) -> Shared:
        """The caps (and nothing else) one process shares between its upstream clients."""
        return Shared.make(self.upstream_api_concurrency, self.upstream_max_concurrency)

    def hub_client(
        self, upstream: str | None = None, *, fail_fast: bool = False, shared: Shared | None = None
    ) -> HubClient:
        """The upstream client. `fail_fast` is for requests a client waits on (pull-through):
        few retries, a short connect timeout and the circuit breaker, so that cached content is
        served quickly instead."""
        token = self.upstream_token.get_secret_value() if self.upstream_token else None
        return HubClient(
            upstream or self.upstream,
            token,
            max_retries=self.proxy.retries if fail_fast else self.upstream_retries,
            backoff_base=self.upstream_backoff,
            backoff_max=2.0 if fail_fast else 30.0,
            max_rate_limit_wait=5.0 if fail_fast else 300.0,
            connect_timeout=self.proxy.connect_timeout if fail_fast else 30.0,
            read_timeout=self.upstream_read_timeout,
            limits=replace(self.upstream_limits, api_timeout=min(self.upstream_api_timeout, self.proxy.api_timeout))
            if fail_fast else self.upstream_limits,
            shared=shared or self.upstream_shared(),
            fail_fast=fail_fast,
        )


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build Settings; `overrides` are command-line flags (None means "not given")."""
    config_file = config_file or os.environ.get("HUBMIRROR_CONFIG")
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    try:
        return _FromFile(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        where = f" in {path}" if path else ""
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid configuration{where}: {msgs}") from None
    except ValueError as e:  # TOML syntax errors, or a HUBMIRROR_* variable that is not JSON
        text = str(e)
        m = re.search(r'error parsing value for field "([^"]+)" from source "EnvSettingsSource"', text)
        if m:
            field = m.group(1)
            names = sorted(k for k in os.environ if k.upper() == f"HUBMIRROR_{field.upper()}"
                           or k.upper().startswith(f"HUBMIRROR_{field.upper()}__"))
            raise ConfigError(f"environment variable {' / '.join(names) or 'HUBMIRROR_' + field.upper()}: "
                              f"not a valid value for {field!r} (lists and tables are written as JSON, "
                              f'e.g. HUBMIRROR_PROXY__ALLOW=\'["acme/*"]\')') from None
        if path is None:
            raise ConfigError(f"invalid configuration: {text}") from None
        raise ConfigError(f"cannot read config file {path}: {text}") from None
