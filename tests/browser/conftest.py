"""The browser tests' fixtures: one Chromium per module, a page per test, and the shared servers (a test that
needs another environment asks `servers.get(...)` for it). Each page is a new visitor of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pages import CHROMIUM, CHROMIUM_FLAGS, PASSWORD, new_page
from servers import Server, Servers

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without Chromium, this folder's tests are skipped (the hook sees every test of the session)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        for item in items:
            if item.path.is_relative_to(HERE):
                item.add_marker(pytest.mark.skip(reason="needs Debian's chromium (make test installs it)"))


@pytest.fixture(scope="module")
def browser():
    """One Chromium per module: Playwright's sync API keeps an asyncio loop running in this thread while it is
    open, which other tests' `asyncio.run` (and AppTest) cannot share."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(autouse=True)
def close_tabs(request: pytest.FixtureRequest):
    """Every tab a test opened is closed when it ends: an open tab goes on polling its server (the queue line, a
    run's progress), and every later test of the module would pay for it in CPU."""
    yield
    if "browser" in request.fixturenames:
        for context in request.getfixturevalue("browser").contexts:
            context.close()


@pytest.fixture
def page(browser):
    page = new_page(browser)
    yield page
    page.context.close()


@pytest.fixture
def served(servers: Servers) -> Server:
    """The default server: no password, the defaults of every setting."""
    return servers.get()


@pytest.fixture
def server(served: Server) -> str:
    return served.url


@pytest.fixture
def signed(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A server with a password and an outputs folder of its own (server.env["OUTPUTS_DIR"])."""
    return servers.get(APP_PASSWORD=PASSWORD, OUTPUTS_DIR=str(tmp_path_factory.getbasetemp() / "signed-outputs"))
