"""Sign-in sessions of the web UI, and CSRF tokens.

A session is a signed cookie, not a server-side record, so that every worker and every replica
recognises it without a table of sessions (they share the key: `ui.session_secret`, or on one
box the key kept in DATA/ui-session.key). It holds no token and no token hash:

    v1.<base64url of {"t": token id, "b": binding, "n": nonce, "x": expiry}>.<base64url HMAC-SHA256>

* `t` names the token the user signed in with; every page looks that token up again (one
  indexed query), so a token revoked, expired or deleted anywhere (CLI, admin API, another
  replica) ends its sessions at once, and the session acts with exactly that token's user,
  groups, role and repo limits.
* `b` binds the session to that token's hash (an HMAC of it under the key, cut to 128 bits): a
  token id reused after its user was removed does not open old sessions.
* `x` ends it after `ui.session_ttl` (12 hours) whatever happens.
* `n` is random: it makes each session's CSRF token (an HMAC of it) and names the session that
  signs out (this process refuses it from then on; the browser drops the cookie).

The cookie is HttpOnly, SameSite=Lax (a link from elsewhere opens the page signed in; no form
of another site can post with it) and Secure when the UI is served over https.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ..catalog import Catalog
from ..model.access import Principal
from .queries import token_state

log = logging.getLogger("hubmirror.ui")

COOKIE = "hubmirror_session"
SIGNIN_COOKIE = "hubmirror_signin"  # the CSRF token of the sign-in form (there is no session yet)
KEY_FILE = "ui-session.key"


def load_key(secret: str | None, data: Path) -> bytes:
    """The signing key: `ui.session_secret`, else one made once per data dir and kept there
    (workers of one box share it; replicas on several machines need the setting)."""
    if secret:
        return hashlib.sha256(b"hubmirror-ui-session\0" + secret.encode()).digest()
    path = data / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning("%s is damaged: making a new UI session key (everyone signs in again)", path)
        path.unlink(missing_ok=True)
    tmp = data / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # publish once: a worker starting at the same time keeps the first key
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
        return bytes.fromhex(path.read_text().strip())
    except OSError as e:  # a full or read-only disk must not stop the server: sessions last until it stops
        log.warning("cannot keep a UI session key in %s (%s): UI sign-ins last until this process stops",
                    path, e.strerror or e)
        return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    token_id: int
    binding: str
    nonce: str
    expires: int  # unix time


class Sessions:
    def __init__(self, catalog: Catalog, key: bytes, ttl: float) -> None:
        self.catalog = catalog
        self._key = key
        self.ttl = ttl
        self._ended: dict[str, int] = {}  # nonce -> expiry, of sessions signed out here

    def _mac(self, what: bytes) -> bytes:
        return hmac.new(self._key, what, hashlib.sha256).digest()

    def _binding(self, token_hash: str) -> str:
        return _b64(self._mac(b"bind\0" + token_hash.encode())[:16])

    # -- the cookie -------------------------------------------------------------------------

    def issue(self, token_id: int, token_hash: str) -> tuple[str, Session]:
        s = Session(token_id, self._binding(token_hash), _b64(secrets.token_bytes(16)), int(time.time() + self.ttl))
        body = _b64(orjson.dumps({"t": s.token_id, "b": s.binding, "n": s.nonce, "x": s.expires}))
        mac = _b64(self._mac(b"session\0" + body.encode()))
        return f"v1.{body}.{mac}", s

    def open(self, value: str | None) -> Session | None:
        """The session a cookie holds, if its signature is ours and it has not expired or ended."""
        if not value or len(value) > 400 or value.count(".") != 2:
            return None
        version, body, mac = value.split(".")
        if version != "v1":
            return None
        try:
            given = _unb64(mac)
            doc = orjson.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._mac(b"session\0" + body.encode())):
            return None
        if not isinstance(doc, dict):
            return None
        t, b, n, x = doc.get("t"), doc.get("b"), doc.get("n"), doc.get("x")
        if not (isinstance(t, int) and isinstance(b, str) and isinstance(n, str) and isinstance(x, int)):
            return None
        if x <= time.time() or n in self._ended:
            return None
        return Session(t, b, n, x)

    def end(self, session: Session) -> None:
        now = time.time()
        self._ended = {n: x for n, x in self._ended.items() if x > now}
        if len(self._ended) >= 100_000:  # bounded: drop those that expire first (the cookie is gone anyway)
            self._ended = dict(sorted(self._ended.items(), key=lambda kv: kv[1])[10_000:])
        self._ended[session.nonce] = session.expires

    # -- CSRF -------------------------------------------------------------------------------

    def csrf(self, session: Session) -> str:
        return _b64(self._mac(b"csrf\0" + session.nonce.encode()))

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(session).encode(), (given or "").encode("utf-8", "replace"))

    # -- who it is --------------------------------------------------------------------------

    async def principal(self, session: Session, client: str) -> Principal | None:
        """Who the session acts as: its token's user, groups, role and limits; None if that token
        is gone, revoked or expired, or is not the one the session was opened with."""
        tok = await asyncio.to_thread(token_state, self.catalog, session.token_id)
        if tok is None or tok.revoked_at is not None:
            return None
        if not hmac.compare_digest(self._binding(tok.hash), session.binding):
            return None
        if tok.expires_at is not None and tok.expires_at <= datetime.now(UTC).replace(tzinfo=None):
            return None
        return Principal(client=client, user=tok.user, groups=tok.groups, role=tok.role, token=tok.name,
                         token_repos=tok.repos, expires_at=tok.expires_at)


def new_signin_csrf() -> str:
    return _b64(secrets.token_bytes(24))


def same(a: str | None, b: str | None) -> bool:
    """Two secrets equal, compared in constant time (False if either is missing)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))
