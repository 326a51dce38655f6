"""Settings from the environment, and the Hub check that decides between cache and download."""

from __future__ import annotations

import http.server
import threading

import pytest

from studio.core.settings import Settings, parse_bool, parse_gpus


@pytest.mark.parametrize("word, expected", [("1", True), ("TRUE", True), (" on ", True), ("yes", True),
                                            ("0", False), ("False", False), ("off", False), ("NO", False)])
def test_one_boolean_reading_for_every_switch(word, expected, monkeypatch):
    assert parse_bool("X", word) is expected
    for name, field in (("CUDA_GRAPHS", "cuda_graphs"), ("COMPILE", "compile"), ("SAFETY_CHECKER", "safety_checker")):
        monkeypatch.setenv(name, word)
        assert getattr(Settings.from_env(), field) is expected


def test_an_unreadable_switch_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("CUDA_GRAPHS", "maybe")
    with pytest.raises(ValueError, match="CUDA_GRAPHS must be 1 or 0"):
        Settings.from_env()


def test_gpus_setting(monkeypatch):
    assert parse_gpus("GPUS", "all") is None and parse_gpus("GPUS", "") is None
    assert parse_gpus("GPUS", "0, 1") == (0, 1)
    for bad in ("a", "0,0", "-1"):
        with pytest.raises(ValueError, match="GPUS"):
            parse_gpus("GPUS", bad)
    monkeypatch.setenv("GPUS", "1")
    assert Settings.from_env().gpus == (1,)


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Answers every request itself, as a forward proxy in front of the Hub would, and remembers the URL."""

    seen: list[str] = []

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        _Proxy.seen.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub_behind_a_proxy(monkeypatch):
    """An endpoint that does not resolve, reachable only through an HTTP proxy on loopback."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    close_session()  # the session reads the proxy settings when it is made
    _Proxy.seen.clear()
    yield server
    server.shutdown()
    monkeypatch.undo()
    close_session()


def test_hub_check_goes_through_the_configured_proxy(hub_behind_a_proxy):
    from studio.engine.loading import hub_reachable

    assert hub_reachable(5.0) is True
    assert _Proxy.seen == ["http://hub.invalid/"]


def test_hub_check_says_no_when_the_proxy_is_down(hub_behind_a_proxy, monkeypatch):
    from huggingface_hub.utils import close_session

    from studio.engine.loading import hub_reachable

    hub_behind_a_proxy.shutdown()
    hub_behind_a_proxy.server_close()
    close_session()
    assert hub_reachable(2.0) is False


def test_hub_check_is_off_when_offline():
    from studio.engine.loading import hub_reachable

    assert hub_reachable(5.0) is False  # the test run sets HF_HUB_OFFLINE=1


@pytest.mark.parametrize("name, value, message", [
    ("MAX_PIXELS", "40M", "MAX_PIXELS must be a whole number of pixels (at least 1), not '40M'"),
    ("MAX_UPLOAD_MB", "0", "MAX_UPLOAD_MB must be a whole number of megabytes (at least 1), not '0'"),
    ("MAX_ASPECT", "wide", "MAX_ASPECT must be a number of times the short side (at least 1), not 'wide'"),
    ("MAX_SIDE", "32", "MAX_SIDE must be a whole number of pixels (at least 64), not '32'"),
    ("PREVIEW_CACHE_MB", "-5", "PREVIEW_CACHE_MB must be a whole number of megabytes"),
    ("MODELS", "huge", "MODELS must be one of tiny, sd15, not 'huge'"),
    ("GPUS", "a", "GPUS must be 'all' or comma-separated GPU indices"),
])
def test_every_bad_value_names_its_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as caught:
        Settings.from_env()
    assert str(caught.value).startswith(message)


def test_each_variable_sets_its_field_and_unset_ones_keep_the_one_default(monkeypatch):
    from studio.core.settings import variables

    names = variables()
    assert {"MODELS", "MAX_PIXELS", "PREVIEW_CACHE_MB", "PRESET_LORA_FAST", "TAESD_MODEL"} <= set(names)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env() == Settings()
    monkeypatch.setenv("MAX_PIXELS", "1000000")
    monkeypatch.setenv("TAESD_MODEL", "none")
    monkeypatch.setenv("LORA_HUB_IDS", " a/b , c/d ")
    settings = Settings.from_env()
    assert (settings.max_pixels, settings.taesd_model, settings.lora_hub_ids) == (1_000_000, None, ("a/b", "c/d"))
    assert Settings.from_env(max_pixels=5).max_pixels == 5  # a keyword wins over the environment


def test_the_launcher_and_make_run_read_the_upload_limit_with_the_apps_parser(monkeypatch):
    import subprocess
    import sys

    import launch

    from helpers import ROOT

    monkeypatch.setenv("MAX_UPLOAD_MB", "0")
    with pytest.raises(launch.LaunchError, match="MAX_UPLOAD_MB must be a whole number of megabytes"):
        launch.streamlit_upload_mb()
    refused = subprocess.run([sys.executable, "-m", "studio.core.settings", "STREAMLIT_UPLOAD_MB"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "MAX_UPLOAD_MB must be" in refused.stderr
    monkeypatch.setenv("MAX_UPLOAD_MB", "7")
    read = subprocess.run([sys.executable, "-m", "studio.core.settings", "STREAMLIT_UPLOAD_MB"], cwd=ROOT,
                          capture_output=True, text=True)
    assert (read.returncode, read.stdout.strip(), launch.streamlit_upload_mb()) == (0, "14", 14)
    assert "-m studio.core.settings STREAMLIT_UPLOAD_MB" in (ROOT / "Makefile").read_text()
