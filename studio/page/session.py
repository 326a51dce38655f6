"""Who this browser tab is: signed in or not, and whose jobs and history it sees. Fragments and widget callbacks
ask too: they run without the page's script, so the password gate at its top does not guard them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from studio.serving import access, state


def client() -> str:
    """Whom this tab's requests come from, as the server counts password failures (access.client_key)."""
    forwarded, address = st.context.headers.get("X-Forwarded-For"), st.context.ip_address
    return access.client_key(forwarded if isinstance(forwarded, str) else None,
                             address if isinstance(address, str) else None, state.setting("trusted_proxy_hops"))


OWNER_KEY = "session-owner"


def signed_in() -> bool:
    """No password is set, or this tab's address carries a valid token; and the session is this visitor's.
    Streamlit lets a websocket reattach to a session by its id, so a client that learned another visitor's session
    id could rerun it with a valid token of its own: the session belongs to the visitor who first ran it signed
    in, and nobody else is signed in to it."""
    if access.password() is not None and not access.valid_token(st.query_params.get(access.TOKEN_PARAM)):
        return False
    return st.session_state.setdefault(OWNER_KEY, visitor()) == visitor()


def visitor() -> str:
    """Whom this tab's jobs belong to: its token (access.py), the same identity the HTTP API counts. A reload or a
    new tab with the same address is the same visitor, so it finds its running job and its history again."""
    return access.owner_of(st.query_params.get(access.TOKEN_PARAM), client())


def history_owner() -> str | None:
    """Whose saved runs this tab may see: its visitor's when a password is set; everybody's without one (one
    person's own machine)."""
    return None if access.password() is None else visitor()


def guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """A widget callback that does nothing for a session that is not signed in."""

    def call(*args: Any, **kwargs: Any) -> None:
        if signed_in():
            callback(*args, **kwargs)

    return call
