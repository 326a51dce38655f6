"""Sharing the URL: what a stranger can send is bounded and refused with a message, never a traceback.

One test per item of the security review that this part covers (issue 14's numbers in the names)."""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
import threading
import time
import types
import zlib
from unittest import mock

import pytest
from PIL import Image

import launch
from studio.core.image_io import InvalidImageError, load_image
from studio.core.request import MAX_PROMPT_CHARS, GenerationRequest, InvalidRequestError

from fake_ngrok import fake_agent
from helpers import ROOT, app_page, free_port


def encoded(fmt: str, size: tuple[int, int] = (32, 32), **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# 6. prompt length ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "added_prompt", "negative_prompt"])
def test_06_prompts_longer_than_the_limit_are_refused(field):
    GenerationRequest(**{field: "x" * MAX_PROMPT_CHARS})
    with pytest.raises(InvalidRequestError, match=f"at most {MAX_PROMPT_CHARS:,} are allowed"):
        GenerationRequest(**{field: "x" * 4_000_000})


def test_06_the_truncation_warning_quotes_at_most_about_a_hundred_characters(tiny_pipeline, photo):
    prompt = " ".join(["a red box"] * 100)  # 300 tiny-tokenizer tokens, 225 of them dropped
    result = tiny_pipeline.generate(photo, GenerationRequest(prompt=prompt, steps=1, resolution=64, seed=1))
    quoted = result.warnings[0].split('ignored: "', 1)[1].rstrip('".')
    assert quoted.endswith("…") and len(quoted) <= 101


def test_06_the_page_limits_what_can_be_typed(app_env):
    app = app_page().run()
    assert app.text_area(key="prompt").proto.max_chars == MAX_PROMPT_CHARS
    assert app.text_input(key="negative_prompt").proto.max_chars == MAX_PROMPT_CHARS


# 9. state.json ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "{", '{"port": 8501}', '{"pid": "x", "app": 3}', "[1, 2]"])
def test_09_an_unreadable_state_file_is_stale_not_a_crash(tmp_path, content, capsys):
    (tmp_path / "state.json").write_text(content)
    assert launch.stop(tmp_path) is False
    assert not (tmp_path / "state.json").exists()
    assert "treating it as stale" in capsys.readouterr().err


def test_09_the_state_file_is_replaced_whole(tmp_path, monkeypatch):
    launch._write_state(tmp_path, {"pid": 1, "app": "app.py"})
    launch._write_state(tmp_path, {"pid": 2, "app": "app.py"})
    assert json.loads((tmp_path / "state.json").read_text())["pid"] == 2

    def crash(*args):  # the process dies between writing and renaming
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        launch._write_state(tmp_path, {"pid": 3, "app": "app.py"})
    assert json.loads((tmp_path / "state.json").read_text())["pid"] == 2, "a cut-short write left the old file whole"


# 10. and 11. messages, not tracebacks ------------------------------------------------------------------------------

def test_10_the_pixel_limit_applies_to_uploads(app_env, monkeypatch):
    from studio.serving import state

    monkeypatch.setenv("MAX_PIXELS", "1000")
    state.reset()  # a server started with this setting
    try:
        app = app_page().run()
        app.file_uploader[0].set_value(("big.png", encoded("PNG", (64, 64)), "image/png")).run()
        assert not app.exception
        assert any("more than the 1,000 allowed" in e.value for e in app.error)
    finally:
        state.reset()


def test_11_visitors_get_no_tracebacks_and_the_log_gets_the_failure(app_env, monkeypatch, caplog):
    import tomllib

    from studio.serving import state

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    monkeypatch.setenv("GPUS", "not-a-list")  # a broken setting: an unexpected error while loading
    state.reset()
    try:
        with caplog.at_level(logging.ERROR):
            app = app_page().run()
    finally:
        state.reset()
    assert not app.exception
    assert [e.value for e in app.error] == ["Something went wrong on the server (it was logged). Reload the page "
                                            "to try again."]
    assert "the page failed" in caplog.text and "GPUS must be" in caplog.text


# 12. only the formats the uploader offers --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "ICO", "PCX", "TGA"])
def test_12_other_pillow_formats_are_refused(fmt):
    with pytest.raises(InvalidImageError, match="PNG, JPEG, WebP or GIF"):
        load_image(encoded(fmt))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_12_the_offered_formats_are_read(fmt):
    assert load_image(encoded(fmt)).size == (32, 32)


def test_12_the_uploader_names_gif_and_leaves_the_check_to_the_server(app_env):
    """The uploader's own type filter would refuse a file with a red mark and a hover text only; the server
    checks every file (load_image) and says why in a message (tests/browser/test_browser_visitors.py: a .txt upload)."""
    app = app_page().run()
    uploader = app.file_uploader[0].proto
    assert "GIF" in uploader.label and list(uploader.type) == []


# 13. guessing the password ----------------------------------------------------------------------------------------

def test_13_wrong_passwords_wait_longer_after_five_counted_on_the_server_and_logged_without_the_guess(
        app_env, monkeypatch, caplog):
    from studio.serving import access

    monkeypatch.setenv("APP_PASSWORD", "the right one")
    monkeypatch.setattr(access, "BACKOFF", access.Backoff())
    clock = types.SimpleNamespace(now=time.time())
    monkeypatch.setattr(access, "time", types.SimpleNamespace(time=lambda: clock.now))  # moves when told
    slept: list[str] = []  # sleeps in the page's script thread (where a back-off must never wait)
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "ScriptRunner.scriptThread":
            slept.append(f"{sys._getframe(1).f_globals.get('__name__')}: {seconds}")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)

    def guess(text: str) -> list[str]:
        tab = app_page().run()  # a new tab (a new session) for every guess: the count is the server's
        tab.text_input[0].set_value(text)
        tab.button[0].click().run()
        assert slept == [], "no script thread sleeps"
        return [e.value for e in tab.error]

    with caplog.at_level(logging.WARNING, logger="app"):
        answers = [guess(f"guess number {attempt}") for attempt in range(6)]
    assert all(a == ["That password is not right."] for a in answers[:5]), answers
    assert answers[5] == ["Too many wrong passwords from here: try again in 1 s."], answers
    clock.now += 1.0
    assert guess("guess number 6") == ["That password is not right."]
    clock.now += 1.5
    assert guess("the right one") == ["Too many wrong passwords from here: try again in 1 s."]  # 2 s after
    clock.now += 0.5
    assert guess("the right one") == []  # in, and the count starts afresh
    failures = [r.getMessage() for r in caplog.records if "wrong app password" in r.getMessage()]
    assert len(failures) == 6 and failures[-1].endswith("(failure 6 in a row from this client)")
    assert "guess number" not in caplog.text


# 15. types, not only ranges ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(steps=True), "steps must be a whole number, got bool"),
    (dict(steps=2.5), "steps must be a whole number, got float"),
    (dict(num_images="2"), "num_images must be a whole number, got str"),
    (dict(guidance_scale="7"), "guidance_scale must be a finite number, got str"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number, got float nan"),
    (dict(controlnet_scale=None), "controlnet_scale must be a finite number, got NoneType"),
    (dict(prompt=None), "prompt must be text, got NoneType"),
    (dict(scheduler=["unipc"]), "scheduler must be text, got list"),
    (dict(guess_mode=1), "guess_mode must be true or false, got int"),
    (dict(lora=3), "lora must be text, got int"),
    (dict(detect_classes=[0, "car"]), "detect_classes must be a list of class ids"),
    (dict(control_classes=(-1,)), "control_classes must be a list of class ids"),
    (dict(width=512.0, height=512), "width must be a whole number, got float"),
])
def test_15_wrong_kinds_of_values_are_refused_with_a_message(change, message):
    with pytest.raises(InvalidRequestError) as error:
        GenerationRequest(**change)
    assert str(error.value).startswith(message)


def test_15_numpy_numbers_are_numbers():
    import numpy as np

    request = GenerationRequest(steps=np.int64(5), guidance_scale=np.float32(2.5), detect_classes=(np.int64(2),))
    assert request.steps == 5 and request.guidance_scale == 2.5


# 14. no server paths in what leaves the server -------------------------------------------------------------------

def test_14_run_cards_and_pngs_carry_names_not_server_paths(tiny_pipeline, photo, tmp_path, model_cache):
    from studio.core.downloads import result_files

    from helpers import make_lora

    lora = make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path)
    result = tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=2, lora=str(lora)))
    tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=2))  # back to no LoRA
    card = json.dumps(result.run_card)
    for private in (str(tmp_path), str(model_cache), str(ROOT)):
        assert private not in card
    assert result.run_card["models"]["sd15"] == "sd15"
    # diffusers' generic file name: named by its folder
    assert result.run_card["request"]["lora"] == f"{lora.parent.name}/{lora.name}"
    for name, data in result_files(result).items():
        assert str(model_cache).encode() not in data and str(tmp_path).encode() not in data, name
    assert GenerationRequest().lora is None and json.loads(card)["models"]["set"] == "tiny"


# 8. --stop ends only what the launcher started ---------------------------------------------------------------------

def test_08_stop_never_ends_a_process_that_only_mentions_the_app_or_ngrok(tmp_path):
    import subprocess
    import sys

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(ROOT / "app.py"), "ngrok"])
    try:
        # a stale state file after a restart: the pid now belongs to someone else, whose command line matches
        stale = {"pid": bystander.pid, "started": 1, "app": str(ROOT / "app.py"), "ngrok_pid": bystander.pid,
                 "ngrok_started": 1}
        (tmp_path / "state.json").write_text(json.dumps(stale))
        assert launch.stop(tmp_path) is False
        assert bystander.poll() is None, "the bystander still runs"
        (tmp_path / "state.json").write_text(json.dumps({"pid": bystander.pid, "app": "app.py"}))  # old format
        assert launch.stop(tmp_path) is False and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_08_stop_ends_the_process_it_started(tmp_path):
    import subprocess
    import sys

    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        launch._write_state(tmp_path, {"pid": ours.pid, "started": launch._started_at(ours.pid), "app": "app.py"})
        assert launch.stop(tmp_path) is True
        assert ours.wait(timeout=15) is not None
    finally:
        if ours.poll() is None:
            ours.kill()


# 16. no "another user is generating" for a preview ------------------------------------------------------------------

def test_16_a_second_visitor_sees_a_live_preview_and_a_queue_place_not_a_busy_notice(app_env):
    first = app_page().run()
    first.slider(key="steps").set_value(150)
    next(b for b in first.button if b.label == "Generate").click().run()
    running = first.session_state["page"].job
    second = app_page().run()
    try:
        assert running.active, "the first visitor's run is still going"
        shown = " ".join(str(getattr(e, "value", "")) for e in [*second.main, *second.sidebar])
        assert "Another" not in shown and "preview appears when" not in shown
        assert second.session_state["page"].detected_labels, "the preview's detections are there during the run"
        next(b for b in second.button if b.label == "Generate").click().run()
        assert any("your run is number 1 in the queue" in i.value for i in second.info)
    finally:
        jobs = [running, second.session_state["page"].job]
        for job in jobs:
            if job is not None:
                job.cancel()
        deadline = time.monotonic() + 60
        while any(job is not None and job.active for job in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)


# 3. the password binds to the tab, not to a session that a socket can reattach to ------------------------------------

def test_03_access_is_bound_to_a_signed_token_in_the_tab(app_env, monkeypatch):
    monkeypatch.setenv("APP_PASSWORD", "the right one")
    app = app_page().run()
    app.text_input[0].set_value("the right one")
    app.button[0].click().run()
    assert len([u for u in app.file_uploader if u.key == "upload-0"]) == 1
    token = app.query_params["access"]
    expires, nonce, signature = token[0].split(".") if isinstance(token, list) else token.split(".")
    assert int(expires) > time.time() + 11 * 3600 and len(signature) == 64
    app.query_params.pop("access")  # the same session, reached without the tab's token: a reattached socket
    app.run()
    assert len(app.file_uploader) == 0 and len(app.text_input) == 1
    app.query_params["access"] = f"{int(expires) + 3600}.{nonce}.{signature}"  # a token stretched by hand
    app.run()
    assert len(app.file_uploader) == 0
    other_tab = app_page()
    other_tab.query_params["access"] = f"{expires}.{nonce}.{signature}"  # the person's own link, in another tab
    other_tab.run()
    assert [u.key for u in other_tab.file_uploader][0] == "upload-0"


def test_03_a_session_shown_someone_elses_token_asks_for_the_password_and_signing_in_starts_it_afresh(
        app_env, monkeypatch):
    from studio.serving import access

    monkeypatch.setenv("APP_PASSWORD", "the right one")
    app = app_page().run()
    app.text_input[0].set_value("the right one")
    app.button[0].click().run()
    app.text_area(key="prompt").set_value("my secret prompt").run()
    app.query_params["access"] = access.mint()  # another visitor's valid token (or this tab's after it expired)
    app.run()
    assert len(app.file_uploader) == 0 and len(app.text_input) == 1, "the password form, nothing of the session"
    app.text_input[0].set_value("the right one")
    app.button[0].click().run()
    assert [u.key for u in app.file_uploader][0] == "upload-0", "signed in again: not locked out of the tab"
    assert app.text_area(key="prompt").value != "my secret prompt", "the session started afresh"


# 1. extreme aspect ratios and oversized outputs ----------------------------------------------------------------------

def header_only(width: int, height: int) -> bytes:
    """What a 40-megapixel strip looks like before decoding: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def real_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data", [header_only(16, 2_500_000), header_only(2_500_000, 16), real_png(16, 20_000),
                                  real_png(20_000, 16)], ids=["16x2500000-at-MAX_PIXELS", "2500000x16-at-MAX_PIXELS",
                                                              "16x20000", "20000x16"])
def test_01_extreme_aspect_ratios_are_refused_from_the_header_without_decoding_a_pixel(data, decoded):
    with pytest.raises(InvalidImageError, match="times longer than wide; at most 8:1 is supported"):
        load_image(data, max_pixels=40_000_000)
    assert decoded == [], "no pixel decoded (so no time or memory spent on them)"


def test_01_an_output_larger_than_max_side_is_refused_before_any_resize(tiny_pipeline):
    wide = Image.new("RGB", (1600, 900), "gray")
    resized: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def resize(image, size, *args, **kwargs):
        resized.append(tuple(size))
        return real_resize(image, size, *args, **kwargs)

    with mock.patch.object(Image.Image, "resize", resize):
        with pytest.raises(InvalidRequestError, match="its long side may be at most 2048"):
            tiny_pipeline.preview(wide, GenerationRequest(resolution=2048))
        with pytest.raises(InvalidRequestError, match="at most 2048"):
            tiny_pipeline.generate(wide, GenerationRequest(resolution=1536, steps=1))
    assert resized == [], "refused from the sizes alone, before any pixel was resized"


def test_01_the_page_says_so_for_a_strip(app_env):
    app = app_page().run()
    app.file_uploader[0].set_value(("strip.png", encoded("PNG", (16, 20_000)), "image/png")).run()
    assert not app.exception
    assert any("times longer than wide" in e.value for e in app.error)


# 2. the upload limit is the setting ---------------------------------------------------------------------------------

@pytest.mark.server
def test_02_streamlits_upload_limit_follows_max_upload_mb(tmp_path, monkeypatch, model_cache):
    from pathlib import Path

    monkeypatch.setenv("MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("DEVICE", "cpu")
    port = free_port()
    started = launch.start(port, "none", "tiny", state_dir=tmp_path, quiet=True)
    try:
        command = Path(f"/proc/{started.pid}/cmdline").read_bytes().split(b"\0")
        assert command[command.index(b"--server.maxUploadSize") + 1] == b"6", "twice: the page refuses by name"
    finally:
        launch.stop(tmp_path)
    monkeypatch.setenv("MAX_UPLOAD_MB", "lots")
    with pytest.raises(launch.LaunchError, match="MAX_UPLOAD_MB must be a whole number"):
        launch.start(port, "none", "tiny", state_dir=tmp_path, quiet=True)
    makefile = (ROOT / "Makefile").read_text()
    assert ("-m studio.core.settings STREAMLIT_UPLOAD_MB) && $(PY) -m streamlit run studio/serving/server.py "
            "--server.maxUploadSize $$size" in makefile)


# 7. the ngrok token: never on a command line, never printed ----------------------------------------------------------

@pytest.mark.server
def test_07_the_token_reaches_the_agent_by_a_private_file_and_is_never_printed(tmp_path, monkeypatch, model_cache,
                                                                               caplog, capsys):
    import os
    from pathlib import Path

    from pyngrok import ngrok

    token = "2fakeTokenForTheTest_0123456789abcdefghijkLMNOP"
    agent, out = fake_agent(tmp_path)
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(agent))
    monkeypatch.setenv("NGROK_AUTHTOKEN", token)
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("DEVICE", "cpu")
    from pyngrok import conf

    monkeypatch.setattr(conf.get_default(), "ngrok_path", str(agent))
    port = free_port()
    state = tmp_path / "state"
    with caplog.at_level(logging.DEBUG, logger="pyngrok"):
        launched = launch.start(port, "ngrok", "tiny", state_dir=state)
    try:
        record = json.loads(out.read_text())
        assert launched.public_url == record["public_url"]
        assert token not in " ".join(record["argv"]) and "--authtoken" not in record["argv"]
        assert os.environ["NGROK_AUTHTOKEN"] == token, "the launcher's own environment is as it was"
        config = Path(record["argv"][record["argv"].index("--config") + 1])
        assert (record["config_mode"], record["folder_mode"], record["token_read"]) == ("0o600", "0o700", token)
        assert not config.exists() and not config.parent.exists(), "removed once the agent had read it"
        assert not config.is_relative_to(state) and not list(state.glob("*.yml")), "never in the project's folder"
        for pid in filter(str.isdigit, os.listdir("/proc")):  # no process's command line holds it
            try:
                assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
            except OSError:
                continue
        assert "Your authtoken: [ngrok token]" in caplog.text, "the agent's line was logged, redacted"
        printed = capsys.readouterr()
        assert token not in caplog.text and token not in printed.out + printed.err
    finally:
        launch.stop(state)
        ngrok.kill()
    assert not list(state.glob("*.yml"))


# 4. and 5. LoRAs from the operator's list only; a Hub LoRA's size checked, outside the GPU lock ---------------------

@pytest.fixture
def lora_dir(tmp_path):
    from studio.engine import tiny_models

    from helpers import make_lora

    root = tmp_path / "offered"
    root.mkdir()
    unet = tiny_models.ensure_tiny_models(tmp_path / "models").sd15 / "unet"
    make_lora(str(unet), tmp_path / "made").rename(root / "ink.safetensors")
    (root / "folder.safetensors").mkdir()
    (tmp_path / "outside.safetensors").write_bytes((root / "ink.safetensors").read_bytes())
    return root


def test_04_only_offered_loras_resolve_and_every_refusal_reads_the_same(lora_dir, tmp_path):
    from studio.core.settings import Settings
    from studio.engine.loras import REFUSED, LoraError, offered, resolve

    settings = Settings(lora_dir=lora_dir, lora_hub_ids=("org/listed-lora",))
    (tmp_path / "elsewhere.safetensors").write_bytes((lora_dir / "ink.safetensors").read_bytes())
    (lora_dir / "link-out.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    assert offered(settings) == ["ink.safetensors", "org/listed-lora"], "a link out of LORA_DIR is not offered"
    assert resolve("ink.safetensors", settings) == str(lora_dir / "ink.safetensors")
    refusals = set()
    for probe in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "folder.safetensors",
                  "missing.safetensors", str(lora_dir), "/etc/passwd", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        with pytest.raises(LoraError) as error:
            resolve(probe, settings)
        refusals.add(str(error.value))
    assert refusals == {REFUSED}, "a file, a folder and nothing must not answer differently"
    free = Settings(allow_any_lora=True)  # a private machine: any local file, or any Hub id (downloaded)
    assert resolve(str(lora_dir), free) == str(lora_dir)
    with pytest.raises(LoraError, match="'anything/at-all' could not be looked up on the Hub"):
        resolve("anything/at-all", free)  # this test run is offline


class _FakeHub:
    """The Hub's model-info API on loopback: a listed LoRA whose file is far too big."""

    def __init__(self, size: int | None = 7_700 * 2**20) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            requests: list[str] = []

            def do_GET(self) -> None:  # noqa: N802
                Handler.requests.append(self.path)
                body = json.dumps({"id": "org/huge-lora", "sha": "0" * 40, "siblings": [
                    {"rfilename": "README.md", "size": 10},
                    {"rfilename": "pytorch_lora_weights.safetensors", "size": size}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.handler = Handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_05_a_listed_hub_lora_is_refused_by_its_size_before_any_download_and_outside_the_gpu_lock(
        tiny_pipeline, photo, monkeypatch):
    import threading
    from dataclasses import replace

    from huggingface_hub import constants

    from studio.engine.loras import LoraError

    hub = _FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(tiny_pipeline, "settings", replace(tiny_pipeline.settings, allow_any_lora=False,
                                                           lora_hub_ids=("org/huge-lora",), lora_max_mb=400))
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, lora="org/huge-lora"))
        except LoraError as exc:
            outcome["error"] = exc

    with tiny_pipeline._lock:  # a run holds the GPU: the LoRA is looked up without waiting for it
        caller = threading.Thread(target=run)
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "the lookup waited for the GPU lock"
    hub.server.shutdown()
    message = str(outcome["error"])
    assert "'org/huge-lora' (pytorch_lora_weights.safetensors, 7,700 MB) is larger than the 400 MB allowed" in message
    assert all(path.startswith("/api/models/org/huge-lora") for path in hub.handler.requests), "no file download"


def test_05_a_hub_lora_that_does_not_say_its_size_is_not_downloaded_and_says_so(monkeypatch):
    from huggingface_hub import constants

    from studio.core.settings import Settings
    from studio.engine.loras import LoraError, resolve

    hub = _FakeHub(size=None)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(LoraError) as refused:
        resolve("org/huge-lora", Settings(lora_hub_ids=("org/huge-lora",), lora_max_mb=400))
    hub.server.shutdown()
    assert "does not say its size on the Hub, so it is not downloaded (at most 400 MB" in str(refused.value)
    assert " 0 MB" not in str(refused.value)


def test_03_tokens_minted_in_the_same_second_differ_and_every_part_is_checked():
    import time as clock

    from studio.serving import access

    tokens = {access.mint() for _ in range(50)}
    assert len(tokens) == 50, "each client its own identity (the per-client limits count per token)"
    token = next(iter(tokens))
    expires, nonce, mac = token.split(".")
    assert int(expires) > clock.time() and len(nonce) == 16 and len(mac) == 64 and access.valid_token(token)
    other = "0" if nonce[0] != "0" else "1"
    for forged in (f"{expires}.{other}{nonce[1:]}.{mac}", f"{int(expires) + 1}.{nonce}.{mac}", f"{expires}.{mac}",
                   f"{expires}.{nonce.upper()}.{mac}", "٣" * 12 + f".{nonce}.{mac}", "9" * 5000):
        assert not access.valid_token(forged), forged
