"""Dashboard sessions: the API token, exchanged once at the login form for a session cookie.

The cookie never carries the token. It is ``<nonce>.<expiry>.<mac>``, the MAC keyed by an
HMAC of the token with a per-state-dir secret (``dashboard-secret``), so:

* a cookie read from a browser profile does not give the API token away;
* sessions survive a controller restart (the secret is on disk), and all of them end when the
  token is rotated (the key is derived from it);
* a stolen cookie dies at its expiry or at logout (logged-out nonces are refused until then).

The CSRF token of a session is another MAC of its nonce: nothing to store per session, and a
form is only accepted with the token of the session that sent it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from skyjobs.fsutil import atomic_write

COOKIE = "skyjobs_session"
SESSION_TTL_S = 12 * 3600.0
SECRET_FILE = "dashboard-secret"


def _state_secret(path: Path) -> bytes:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        # 0600 from the first byte, like every other secret of the state dir.
        atomic_write(path, secrets.token_urlsafe(32))
        value = path.read_text().strip()
    return value.encode()


class Sessions:
    def __init__(self, token: str, state_dir: Path) -> None:
        self._token = token.encode()
        self._secret_path = state_dir / SECRET_FILE
        self._key_cache: bytes | None = None
        # nonce -> expiry of sessions ended by logout (kept only until they would expire).
        self._revoked: dict[str, float] = {}

    @property
    def _key(self) -> bytes:
        # Made on first use, not at controller start: a controller whose dashboard nobody
        # opens never writes (and fsyncs) the secret file while it starts.
        if self._key_cache is None:
            secret = _state_secret(self._secret_path)
            self._key_cache = hmac.new(secret, b"skyjobs-dashboard-session-v1\0" + self._token,
                                       hashlib.sha256).digest()
        return self._key_cache

    def token_ok(self, given: str) -> bool:
        # An empty token file must never let an empty form field in (as in the API).
        return bool(self._token) and hmac.compare_digest(given.strip().encode(), self._token)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(),
                        hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_TTL_S)
        body = f"{secrets.token_urlsafe(18)}.{expires}"
        return f"{body}.{self._mac('session', body)}"

    def check(self, cookie: str | None, now: float | None = None) -> str | None:
        """The session's nonce if the cookie is one of ours, unexpired and not logged out."""
        if not cookie or cookie.count(".") != 2:
            return None
        nonce, expires, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", f"{nonce}.{expires}")):
            return None
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        return None if nonce in self._revoked else nonce

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf", nonce)

    def csrf_ok(self, nonce: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given), self.csrf(nonce))

    def revoke(self, cookie: str) -> None:
        now = time.time()
        self._revoked = {n: t for n, t in self._revoked.items() if t > now}
        nonce, expires, _ = cookie.split(".")
        self._revoked[nonce] = float(expires)
