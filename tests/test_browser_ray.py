"""The browser tests of the jobs (sliders moved during a run, Cancel, two visitors at once) again, with the jobs on
a Ray Serve deployment (JOBS_BACKEND=ray): a Ray instance started by the server, one CPU replica."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from test_browser import (browser, page, serve_app,  # noqa: E402, F401
                          test_cancel_says_so_once_and_the_page_is_ready_at_once,
                          test_moving_sliders_during_a_run_neither_kills_it_nor_changes_it,
                          test_two_visitors_generate_at_once_and_the_second_sees_its_place)


@pytest.fixture
def launched(tmp_path, monkeypatch, model_cache):
    monkeypatch.setenv("JOBS_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setenv("RAY_REPLICAS", "1")  # one replica, as one worker: the second visitor waits
    yield from serve_app(tmp_path, monkeypatch, model_cache)


@pytest.fixture
def server(launched) -> str:
    return launched[0]
