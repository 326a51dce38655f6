"""One gate in front of everything the port serves. With APP_PASSWORD set, Streamlit's upload, media, component
and metrics endpoints answer only a client that shows a valid token (access.py): the page's tab carries it in its
address, and the browser sends it along as the Referer of every request the page makes (this gate's
`Referrer-Policy: same-origin` keeps it from ever leaving for another site), or as the `studio_access` cookie set
when a page is opened with its token. The page itself, Streamlit's health check and the API (which checks its own
bearer tokens) pass; the page script asks for the password before it shows anything.

Every answer gets headers that keep the page from being framed by other sites or its files from being sniffed.
On the page's websocket the gate drops two of Streamlit's messages that any client may send before it has signed
in: `load_git_info` (answered with the repository, the branch and the names of untracked files) and `clear_cache`
(which empties every visitor's caches; the server's own objects live outside them anyway, state.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from studio.serving import access

GUARDED = ("/_stcore/upload_file", "/media/", "/component/", "/_stcore/bidi-components/", "/_stcore/metrics")
COOKIE = "studio_access"
HEADERS = ((b"x-frame-options", b"SAMEORIGIN"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"),
           (b"content-security-policy", b"frame-ancestors 'self'; object-src 'none'; base-uri 'self'"))
Scope = dict[str, Any]
Message = dict[str, Any]


def token_of(scope: Scope) -> str | None:
    """The token a request shows: in its own query, its Referer's query, or the cookie."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    candidates = [parse_qs(scope.get("query_string", b"").decode("latin-1")).get(access.TOKEN_PARAM, [None])[0],
                  parse_qs(urlsplit(headers.get("referer", "")).query).get(access.TOKEN_PARAM, [None])[0]]
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header shows no token
        cookie = SimpleCookie()
    candidates.append(cookie[COOKIE].value if COOKIE in cookie else None)
    return next((token for token in candidates if access.valid_token(token)), None)


def https(scope: Scope) -> bool:
    """The browser reached us over https: directly, or through a proxy that says so (ngrok's agent sets
    X-Forwarded-Proto). Then the cookie is marked Secure; a client that claims https over http only loses it."""
    headers = dict(scope.get("headers", []))
    return scope.get("scheme") == "https" or b"https" in headers.get(b"x-forwarded-proto", b"").lower()


DROPPED = ("load_git_info", "clear_cache")


def dropped(message: Message) -> bool:
    """A websocket frame carrying one of the DROPPED messages (anything else, even unreadable, passes on)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    data = message.get("bytes") if message.get("type") == "websocket.receive" else None
    if not data:
        return False
    back = BackMsg()
    try:
        back.ParseFromString(data)
    except Exception:  # Streamlit answers a broken frame itself (closes with 1002)
        return False
    return back.WhichOneof("type") in DROPPED


class Gate:
    """ASGI middleware (st.App's `middleware=`): refuses the guarded endpoints without a token, adds headers."""

    def __init__(self, app: Callable[[Scope, Any, Any], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "websocket":
            async def filtered() -> Message:
                while True:
                    message = await receive()
                    if not dropped(message):
                        return message

            await self.app(scope, filtered, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = token_of(scope) if access.password() is not None else None
        if access.password() is not None and scope["path"].startswith(GUARDED) and token is None:
            await refuse(send)
            return
        sets_cookie = token is not None and access.TOKEN_PARAM.encode() in scope.get("query_string", b"")
        secure = "; Secure" if https(scope) else ""

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in HEADERS if name not in present]
                if sets_cookie:
                    extra.append((b"set-cookie", f"{COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly{secure}; "
                                                 f"Max-Age={access.TOKEN_HOURS * 3600}".encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


async def refuse(send: Callable[[Message], Awaitable[None]]) -> None:
    body = b'{"error": "Sign in to the page first: this server needs its password."}'
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *HEADERS]})
    await send({"type": "http.response.body", "body": body})
