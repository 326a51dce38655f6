"""Before the page: the password, and the server's models and job queue (loaded once, for every visitor)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import streamlit as st

from studio.core.errors import JobsBackendError, ModelLoadError
from studio.page.session import client, signed_in
from studio.serving import access, state
from studio.serving.jobs import JobQueue

log = logging.getLogger("app")


def password_gate() -> bool:
    """True when no password is set, or this tab carries a valid token in its address (access.py). Checked on
    every run: Streamlit lets a websocket reattach to an existing session by its id, so a flag in session state
    would let anyone who learns that id in; the token lives in the tab's address, which a reattached socket does
    not have. After FREE_GUESSES wrong guesses from one client, each further one is taken only after a growing
    wait, counted on the server (a new tab changes nothing), and every failure is logged without the guess."""
    if access.password() is None:
        if not access.valid_token(st.query_params.get(access.TOKEN_PARAM)):
            st.query_params[access.TOKEN_PARAM] = access.mint()  # an identity of its own, also without a password
        return True
    if signed_in():
        return True
    with st.form("login"):
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Enter"):
            if access.BACKOFF.turn(client(), wait=False) is None:
                wait = access.BACKOFF.wait_s(client())
                st.error(f"Too many wrong passwords from here: try again in {math.ceil(wait)} s.")
            elif access.is_password(given):
                access.BACKOFF.succeeded(client())
                st.session_state.clear()  # a new visitor: nothing of whoever held this session before
                st.query_params[access.TOKEN_PARAM] = access.mint()
                st.rerun()
            else:
                failures = access.BACKOFF.failures(client())
                log.warning("wrong app password (failure %d in a row from this client)", failures)
                st.error("That password is not right.")
    return False


def load_jobs() -> JobQueue | None:
    """The server's job queue (studio/serving/state.py: once per process, shared with the HTTP API)."""
    try:
        with st.spinner("Loading the models (once per server)…"):
            return state.jobs()
    except JobsBackendError as exc:
        way_out(f"**The jobs cannot run on the Ray cluster.** {exc}", "Use the local job queue instead",
                lambda: state.use_backend("local"))
    except ModelLoadError as exc:
        way_out(f"**The real models could not be loaded.** {exc}", "Use the offline smoke models instead",
                lambda: state.use_models("tiny"))
    return None


def way_out(message: str, label: str, switch: Callable[[], None]) -> None:
    """Why the server cannot start as set up, and a button that switches it (for every visitor) to what can."""
    st.error(message)
    if st.button(label, type="primary"):
        switch()
        st.rerun()
