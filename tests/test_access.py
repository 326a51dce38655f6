"""Who may use the server (studio/serving/access.py and the API's authorize): the client behind proxies, the
back-off that parallel guesses cannot outrun, what a token can and cannot do, passwords in any script."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import types
import unicodedata

import pytest
from starlette.requests import Request

from studio.serving import access, api

PASSWORD = "the right one"


@pytest.fixture
def clock(monkeypatch):
    """access's clock, moved only by the test; a fresh back-off table; the password set."""
    now = types.SimpleNamespace(now=1_800_000_000.0)
    monkeypatch.setattr(access, "time", types.SimpleNamespace(time=lambda: now.now))
    monkeypatch.setattr(access, "BACKOFF", access.Backoff())
    monkeypatch.setenv("APP_PASSWORD", PASSWORD)
    return now


def request(credential: str, forwarded_for: str | None = None, address: str = "127.0.0.1",
            scheme: str = "Bearer") -> Request:
    headers = [(b"authorization", f"{scheme} {credential}".encode())]
    if forwarded_for:
        headers.append((b"x-forwarded-for", forwarded_for.encode()))
    return Request({"type": "http", "method": "GET", "path": "/api/v1/info", "headers": headers,
                    "client": (address, 50000), "query_string": b""})


def authorize_all(monkeypatch, requests: list[Request]) -> tuple[list[str], list[float]]:
    """Every request authorized at once (as parallel connections are), each answer as "ok", "401" or "429", and
    the waits the API slept (recorded, not slept)."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))

    monkeypatch.setattr(api.asyncio, "sleep", sleep)

    async def one(item: Request) -> str:
        try:
            await api.authorize(item)
            return "ok"
        except api.ApiError as exc:
            return str(exc.status)

    async def everyone() -> list[str]:
        return list(await asyncio.gather(*(one(item) for item in requests)))

    return asyncio.run(everyone()), waits


@pytest.mark.parametrize("forwarded, hops, client", [
    ("6.6.6.6", 0, "127.0.0.1"),  # locally nobody's hops are believed
    ("6.6.6.6, 7.7.7.7", 1, "7.7.7.7"),  # behind ngrok: the hop the agent appended
    ("6.6.6.6, 7.7.7.7, 8.8.8.8", 2, "7.7.7.7"),
    ("8.8.8.8", 2, "127.0.0.1"),  # fewer hops than proxies: the request did not come through them
    (None, 1, "127.0.0.1"),
])
def test_the_client_is_the_earliest_trusted_hop_and_locally_the_socket(forwarded, hops, client):
    assert access.client_key(forwarded, "127.0.0.1", hops) == client


def test_20_wrong_passwords_with_rotating_forwarded_for_meet_the_back_off(clock, monkeypatch):
    answers, waits = authorize_all(monkeypatch, [request(f"guess {n}", f"10.0.0.{n}") for n in range(20)])
    assert answers == ["401"] * 10 + ["429"] * 10
    assert waits == [0, 0, 0, 0, 0, 1, 3, 7, 15, 31], "five free, then one turn apart: 1 s, 2 s, 4 s, 8 s, 16 s"


def test_60_parallel_guesses_are_checked_a_turn_apart_and_the_right_one_last_is_refused_unchecked(
        clock, monkeypatch):
    checked: list[str] = []
    real = access.is_password
    monkeypatch.setattr(access, "is_password", lambda credential: checked.append(credential) or real(credential))
    answers, waits = authorize_all(monkeypatch, [request(f"guess {n}") for n in range(59)] + [request(PASSWORD)])
    assert answers[-1] == "429" and PASSWORD not in checked
    assert len(checked) == 10 and answers.count("429") == 50
    assert waits == [0, 0, 0, 0, 0, 1, 3, 7, 15, 31]


def test_a_valid_token_never_waits_on_wrong_guesses_and_the_right_password_waits_its_turn(clock, monkeypatch):
    token = access.mint()
    answers, waits = authorize_all(monkeypatch, [request(f"guess {n}") for n in range(8)] + [request(token)])
    assert answers == ["401"] * 8 + ["ok"] and len(waits) == 8, "the token was not held back"
    assert authorize_all(monkeypatch, [request(PASSWORD)]) == (["ok"], [pytest.approx(15.0)])  # its turn: +15 s
    assert access.BACKOFF.failures("127.0.0.1") == 0, "a right password starts the count afresh"


def test_a_token_mints_only_itself_and_cannot_outlive_itself(clock):
    root = access.mint()
    clock.now += 3600
    assert access.mint(shown=root) == root, "the same visitor, the same expiry"
    assert access.mint(shown=PASSWORD) != access.mint(shown=PASSWORD) != root, "the password mints new visitors"
    clock.now += access.TOKEN_HOURS * 3600
    assert not access.valid_token(root) and access.mint(shown=root) != root, "expired: only the password mints"


def test_password_holders_are_visitors_by_address_and_no_owner_derives_from_the_password(clock):
    owners = {access.owner_of(PASSWORD, address) for address in ("1.1.1.1", "2.2.2.2")}
    token = access.mint()
    owners.add(access.owner_of(token, "1.1.1.1"))
    assert len(owners) == 3
    assert access.owner_of(token, "1.1.1.1") == access.owner_of(token, "9.9.9.9"), "a token is one visitor anywhere"
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert not any(digest[:8] in owner or PASSWORD in owner for owner in owners)


@pytest.mark.parametrize("password", ["pässwörd", "пароль-42", "密码🔑", "e\u0301te\u0301"])
def test_a_password_in_any_script_can_be_entered_composed_or_not_and_over_basic_auth(clock, monkeypatch, password):
    monkeypatch.setenv("APP_PASSWORD", password)
    for form in ("NFC", "NFD"):
        assert access.is_password(unicodedata.normalize(form, password))
    basic = base64.b64encode(f"studio:{password}".encode()).decode()
    assert authorize_all(monkeypatch, [request(basic, scheme="Basic")])[0] == ["ok"]
    assert not access.is_password(password + "x") and not access.is_password("")


@pytest.mark.parametrize("scheme, proto, secure", [("http", None, False), ("http", b"https", True),
                                                   ("https", None, True)])
def test_the_access_cookie_is_secure_when_the_browser_came_over_https(clock, scheme, proto, secure):
    from studio.serving import gate

    token, sent = access.mint(), []

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message) -> None:
        sent.append(message)

    headers = [(b"x-forwarded-proto", proto)] if proto else []
    scope = {"type": "http", "scheme": scheme, "path": "/", "query_string": f"access={token}".encode(),
             "headers": headers}
    asyncio.run(gate.Gate(app)(scope, None, send))
    cookie = dict(sent[0]["headers"])[b"set-cookie"].decode()
    assert cookie.startswith(f"studio_access={token};") and ("; Secure;" in cookie) is secure
