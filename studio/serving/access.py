"""Who may use the server: the app password, the tokens signed for it, and the growing delay after wrong guesses.

Everything here lives once per server process, outside Streamlit's caches (a `clear_cache` message from any
browser empties `st.cache_resource`), so the page, the HTTP API and the gate in front of Streamlit's own
endpoints share one signing key and one count of failures per client.

A token is `<expires>.<random nonce>.<hex HMAC-SHA256 of both>`, signed with a key made when the process starts:
the page puts it in the tab's address (`?access=`), also without a password (it names the visitor whose jobs
a reload finds again); the HTTP API takes it (or the password itself) as a bearer token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time

FREE_GUESSES = 5
MAX_DELAY_S = 60.0
TOKEN_HOURS = 12
TOKEN_PARAM = "access"
_KEY = secrets.token_bytes(32)
_EXPIRES_DIGITS = 12  # seconds since 1970 fit in 11 digits until the year 5138
_NONCE_BYTES = 8


def password() -> str | None:
    """APP_PASSWORD from the environment (launch.py sets it for public tunnels) or Streamlit's secrets file;
    None: the server is open."""
    if os.environ.get("APP_PASSWORD"):
        return os.environ["APP_PASSWORD"]
    import streamlit as st

    try:
        return st.secrets.get("APP_PASSWORD") or None
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return None


def sign(expires: int, nonce: str) -> str:
    return f"{expires}.{nonce}.{hmac.new(_KEY, f'{expires}.{nonce}'.encode(), hashlib.sha256).hexdigest()}"


def mint(hours: float = TOKEN_HOURS) -> str:
    """A token valid for `hours`, for the page's address or an API client: each one different (its random nonce),
    since the per-client limits count per token."""
    return sign(int(time.time() + hours * 3600), secrets.token_hex(_NONCE_BYTES))


def valid_token(token: str | None) -> bool:
    """True for a token this process signed that has not expired; parsed strictly (ASCII digits and hex, bounded
    lengths), so no crafted value can raise."""
    if not token or len(token) > 120 or not token.isascii():
        return False
    expires, _, rest = token.partition(".")
    nonce, _, _ = rest.partition(".")
    if not expires.isdigit() or len(expires) > _EXPIRES_DIGITS or int(expires) <= time.time():
        return False
    if len(nonce) != 2 * _NONCE_BYTES or any(c not in "0123456789abcdef" for c in nonce):
        return False
    return hmac.compare_digest(token.encode(), sign(int(expires), nonce).encode())


def allowed(credential: str | None) -> bool:
    """True when no password is set, or `credential` is the password or a valid token (compared in constant
    time)."""
    expected = password()
    if expected is None:
        return True
    if not credential or not credential.isascii():
        return False
    return hmac.compare_digest(credential.encode(), expected.encode()) or valid_token(credential)


def client_key(forwarded_for: str | None, address: str | None) -> str:
    """Whom a request comes from: the last X-Forwarded-For hop, which the nearest proxy (the ngrok agent) wrote and
    a client cannot forge, else the socket's address."""
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    return (hops[-1] if hops else address or "unknown")[:64]


def owner_of(credential: str | None, client: str) -> str:
    """Whom a request counts as, for per-client limits: its credential (hashed), or its address without one."""
    if credential:
        return "token:" + hashlib.sha256(credential.encode()).hexdigest()[:16]
    return f"address:{client}"


class Backoff:
    """Failures counted per client (its address, or its token) on the server: after FREE_GUESSES wrong guesses,
    each further guess is taken only once 1 s, then 2 s, 4 s … (up to a minute) have passed since the last one.
    Nobody sleeps in a thread: the API waits with `asyncio.sleep`, the page says how long to wait."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds until this client's next guess is taken (0: now)."""
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
        if count < FREE_GUESSES:
            return 0.0
        return max(0.0, last + min(MAX_DELAY_S, 2.0 ** (count - FREE_GUESSES)) - time.time())

    def failed(self, client: str) -> int:
        """Count a wrong guess; the number of failures in a row."""
        with self._lock:
            count = self._failures.get(client, (0, 0.0))[0] + 1
            self._failures[client] = (count, time.time())
            cutoff = time.time() - 3600  # a client quiet for an hour starts afresh; the table stays small
            for old in [c for c, (_, last) in self._failures.items() if last < cutoff]:
                del self._failures[old]
            return count

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


BACKOFF = Backoff()
