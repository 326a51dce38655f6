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
import unicodedata
from dataclasses import dataclass

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


def mint(hours: float = TOKEN_HOURS, shown: str | None = None) -> str:
    """A token for the page's address or an API client. Shown the password (or nothing, on an open server): a new
    identity, valid for `hours`, each different (its random nonce). Shown a token: that token again, so a token
    can neither outlive itself nor split into identities that each get a share of the queue."""
    if valid_token(shown):
        return shown
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


def _utf8(text: str) -> bytes:
    """A password as bytes to compare: Unicode NFC (a keyboard may send "é" as one code point or two), UTF-8."""
    return unicodedata.normalize("NFC", text).encode("utf-8")


def is_password(credential: str | None) -> bool:
    """`credential` is the app password (compared in constant time, any script)."""
    expected = password()
    return bool(credential) and expected is not None and hmac.compare_digest(_utf8(credential), _utf8(expected))


def client_key(forwarded_for: str | None, address: str | None, trusted_hops: int = 0) -> str:
    """Whom a request comes from. Each proxy in front of the server appends the address it was reached from to
    X-Forwarded-For, and a client can write any hops of its own before them, so only the last `trusted_hops`
    (TRUSTED_PROXY_HOPS: 0 locally, 1 behind the ngrok agent) are believed: the earliest of those is the client.
    With none trusted, the socket's own address."""
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    if trusted_hops and len(hops) >= trusted_hops:
        return hops[-trusted_hops][:64]
    return (address or "unknown")[:64]


def owner_of(credential: str | None, client: str) -> str:
    """Whom a request counts as, for per-visitor limits and history. A token: its nonce, keyed with the server's
    secret (no token, no password and nothing that helps guess either is ever stored). The password itself: the
    client's address, so two people with the password are two visitors. Neither: the address."""
    if valid_token(credential):
        nonce = credential.split(".")[1]
        return "token:" + hmac.new(_KEY, nonce.encode(), hashlib.sha256).hexdigest()[:16]
    return f"address:{client}"


@dataclass
class _Guesses:
    failures: int = 0  # counted when a guess is let through, forgiven when it was right
    next_at: float = 0.0  # when the next guess may be checked
    last: float = 0.0  # when the last one came


class Backoff:
    """Password guesses counted per client (its address) on the server, shared by the page and the API: after
    FREE_GUESSES, each further guess is checked only 1 s, then 2 s, 4 s … (up to a minute) after the one before.
    Each guess takes its turn when it arrives and counts as a failure until it proves right, so guesses sent at
    once are checked one turn apart, never together. Nobody sleeps in a thread: the API waits for its turn with
    `asyncio.sleep` (a turn more than a minute away is refused at once), the page says how long to wait."""

    def __init__(self) -> None:
        self._clients: dict[str, _Guesses] = {}
        self._lock = threading.Lock()

    def turn(self, client: str, wait: bool) -> float | None:
        """Take this client's next turn: the seconds until the guess may be checked (0: now), with the turn
        counted; or, when it is not now and `wait` is False or the turn is over MAX_DELAY_S away, None with
        nothing counted (`wait_s` says how long)."""
        with self._lock:
            now = time.time()
            self._forget_quiet(now)
            guesses = self._clients.setdefault(client, _Guesses())
            at = max(now, guesses.next_at)
            if at > now and (not wait or at - now > MAX_DELAY_S):
                return None
            guesses.failures, guesses.last = guesses.failures + 1, now
            if guesses.failures >= FREE_GUESSES:
                guesses.next_at = at + min(MAX_DELAY_S, 2.0 ** (guesses.failures - FREE_GUESSES))
            return at - now

    def wait_s(self, client: str) -> float:
        """Seconds until this client's next guess may be checked."""
        with self._lock:
            guesses = self._clients.get(client)
            return max(0.0, guesses.next_at - time.time()) if guesses else 0.0

    def failures(self, client: str) -> int:
        with self._lock:
            guesses = self._clients.get(client)
            return guesses.failures if guesses else 0

    def succeeded(self, client: str) -> None:
        """The guess was right: the count starts afresh."""
        with self._lock:
            self._clients.pop(client, None)

    def _forget_quiet(self, now: float) -> None:
        """A client quiet for an hour starts afresh; the table stays small."""
        for quiet in [client for client, guesses in self._clients.items() if max(guesses.last, guesses.next_at)
                      < now - 3600]:
            del self._clients[quiet]


BACKOFF = Backoff()
