"""The browser tests of the jobs (sliders moved during a run, Cancel, two visitors at once) again, with the jobs on
a Ray Serve deployment (JOBS_BACKEND=ray): the session's Ray instance, one CPU replica."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from test_browser import (  # noqa: E402, F401
    test_cancel_says_so_once_and_the_page_is_ready_at_once,
    test_moving_sliders_during_a_run_neither_kills_it_nor_changes_it,
    test_two_visitors_generate_at_once_and_the_second_sees_its_place,
)


@pytest.fixture(scope="module")
def ray_server(servers, ray_address):
    """One server for this module whose jobs run on the session's Ray instance, one replica (as one worker: the
    second visitor waits). Stopped with the module: it deletes its Serve application, which test_ray_jobs.py
    deploys anew with two replicas."""
    server = servers.get(JOBS_BACKEND="ray", RAY_ADDRESS=ray_address, RAY_REPLICAS="1")
    yield server
    servers.stop(server)


@pytest.fixture
def served(ray_server):
    ray_server.wait_until_idle()
    return ray_server
