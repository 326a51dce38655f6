"""launch.py: real Streamlit servers started, restarted and stopped; ngrok errors and the token."""

from __future__ import annotations

import http.server
import os
import re
import sys
import threading
import time
import types
import urllib.request
from unittest import mock
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from pyngrok import ngrok
from pyngrok.exception import PyngrokNgrokError, PyngrokNgrokHTTPError

import launch

from helpers import ROOT, free_port

TOKEN = "2abcDEFghiJKLmnoPQRstuVWXyz_0123456789abcdefGHIJK"
ERR_4018 = ("authentication failed: Usage of ngrok requires a verified account and authtoken.\n\nSign up for an "
            "account: https://dashboard.ngrok.com/signup\nInstall your authtoken: "
            "https://dashboard.ngrok.com/get-started/your-authtoken\r\n\r\nERR_NGROK_4018\r\n")
ERR_107 = (f"authentication failed: The authtoken you specified is properly formed, but it is invalid.\nYour "
           f"authtoken: {TOKEN}\nThis usually happens when:\n    - You reset your authtoken\nGo to your ngrok "
           f"dashboard and double check that your authtoken is correct:\nhttps://dashboard.ngrok.com/auth\r\n\r\n"
           f"ERR_NGROK_107\r\n")
ERR_108 = ("authentication failed: Your account is limited to 1 simultaneous ngrok agent sessions.\nYou can run "
           "multiple simultaneous tunnels from a single agent session by defining the tunnels in your agent "
           "configuration file and starting them with the command `ngrok start --all`.\nYou can view your current "
           "agent sessions in the dashboard:\nhttps://dashboard.ngrok.com/agents\r\n\r\nERR_NGROK_108\r\n")


def health(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=3) as reply:
            return reply.read().decode()
    except OSError:
        return None


@pytest.fixture
def state_dir(tmp_path, monkeypatch, model_cache):
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    folder = tmp_path / "launch-state"
    yield folder
    launch.stop(folder)


@pytest.mark.server
def test_start_reaches_health_and_a_second_start_replaces_the_first(state_dir):
    port = free_port()
    first = launch.start(port, "none", "tiny", state_dir=state_dir, quiet=True)
    assert health(port) == "ok" and first.local_url == f"http://127.0.0.1:{port}"
    second = launch.start(port, "none", "tiny", state_dir=state_dir, quiet=True)
    assert second.pid != first.pid
    assert not Path(f"/proc/{first.pid}").exists(), "the first server must be gone"
    assert health(port) == "ok"
    assert launch.stop(state_dir) is True
    assert not Path(f"/proc/{second.pid}").exists() and health(port) is None


@pytest.mark.server
def test_the_url_comes_once_the_models_are_loaded_and_warm_so_the_first_run_loads_nothing(state_dir, capsys):
    import json

    launched = launch.start(free_port(), "none", "tiny", state_dir=state_dir)
    printed = capsys.readouterr().out
    assert printed.index("Loading the models…") < printed.index("The app is ready at")
    log = state_dir / "streamlit.log"
    loads = log.read_text().count("Loading pipeline components")
    assert loads >= 1, "the models were loaded before the URL was printed"
    with urllib.request.urlopen(f"{launched.local_url}/api/v1/health", timeout=10) as reply:
        assert json.loads(reply.read())["models"] == "ready"
    data, boundary = (ROOT / "assets" / "sample_scene.png").read_bytes(), "xxboundaryxx"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n"
            f'{{"steps": 2, "seed": 1}}\r\n--{boundary}--\r\n').encode()
    submit = urllib.request.Request(f"{launched.local_url}/api/v1/jobs", data=body, method="POST",
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(submit, timeout=30) as reply:
        job = json.loads(reply.read())["id"]
    deadline = time.monotonic() + 120
    while True:
        with urllib.request.urlopen(f"{launched.local_url}/api/v1/jobs/{job}", timeout=10) as reply:
            if json.loads(reply.read())["state"] == "done":
                break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert log.read_text().count("Loading pipeline components") == loads, "the first run loaded nothing"


@pytest.mark.server
def test_offline_the_launcher_and_the_prefetch_say_so_in_one_sentence(state_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the server's: nothing answers there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # this process's, for the prefetch
    assert launch.main(["--prefetch", "--models", "sd15"]) == 1
    assert launch.main(["--tunnel", "none", "--models", "sd15", "--port", str(free_port()),
                        "--state-dir", str(state_dir)]) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "Traceback" not in text
    sentence = [line for line in text.splitlines() if "Settings → Internet" in line]
    assert len(sentence) == 2, text  # the prefetch's, and the launcher's
    assert any(line.startswith("The models could not be loaded: The Hugging Face Hub cannot be reached")
               for line in sentence), text
    assert "The app is ready at" in text  # the page is up, and offers the smoke models


def test_a_port_taken_by_another_server_fails_clearly_and_fast(state_dir):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started: list[list[str]] = []
    try:
        with mock.patch.object(launch.subprocess, "Popen", side_effect=lambda command, **_: started.append(command)):
            with pytest.raises(launch.LaunchError, match=f"Port {server.server_port} is already in use"):
                launch.start(server.server_port, "none", "tiny", state_dir=state_dir, quiet=True)
        assert started == [], "refused before any server was started (nothing to wait for)"
    finally:
        server.shutdown()


@pytest.mark.server
def test_an_app_that_dies_at_start_fails_with_its_log_lines(state_dir, tmp_path):
    with pytest.raises(launch.LaunchError) as error:
        launch.start(free_port(), "none", "tiny", state_dir=state_dir, app=tmp_path / "missing_app.py", quiet=True)
    message = str(error.value)
    assert "exited with code" in message and "missing_app.py" in message and "does not exist" in message


def test_cli_help_names_every_option():
    import subprocess

    help_text = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_text.returncode == 0
    for option in ("--port", "--tunnel", "--models", "--auth", "--no-auth", "--stop"):
        assert option in help_text.stdout


@pytest.mark.server
def test_cli_stop_ends_a_running_app_then_finds_nothing(state_dir):
    import subprocess

    port = free_port()
    launched = launch.start(port, "none", "tiny", state_dir=state_dir, quiet=True)
    assert health(port) == "ok"
    stop = [sys.executable, "launch.py", "--stop", "--state-dir", str(state_dir)]
    first = subprocess.run(stop, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (first.returncode, first.stdout.strip()) == (0, "Stopped.")
    stat = Path(f"/proc/{launched.pid}/stat")
    assert health(port) is None
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z", "ended (a zombie until this test reaps it)"
    again = subprocess.run(stop, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout.strip()) == (0, "Nothing to stop.")


def test_a_process_has_ended_when_every_thread_has_not_when_its_main_thread_has():
    """A `--stop` from another shell cannot reap the app: it waits until the app is a zombie, not for its 10 s
    grace period; and a process whose main thread left while another runs is still running."""
    import subprocess

    def leader_state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    main_left = subprocess.Popen([sys.executable, "-c", "import ctypes, threading, time; "
                                  "threading.Thread(target=time.sleep, args=(30,)).start(); "
                                  "ctypes.CDLL(None).pthread_exit(None)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while {leader_state(main_left.pid), leader_state(finished.pid)} != {"Z"}:
            assert time.monotonic() < deadline, "the two processes never reached their states"
            time.sleep(0.05)
        assert not launch._ended(main_left.pid), "its other thread still runs"
        assert launch._ended(finished.pid), "a zombie: only the wait is left"
        assert not launch._ended(os.getpid())
        finished.wait()
        assert launch._ended(finished.pid), "gone"
    finally:
        main_left.kill()
        main_left.wait()


def test_a_python_without_the_requirements_is_told_what_to_use(tmp_path):
    import subprocess

    hide = ("import sys, runpy; sys.modules['streamlit'] = None; "
            f"sys.argv = ['launch.py', '--tunnel', 'none', '--port', '{free_port()}']; "
            "runpy.run_path('launch.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "lacks the app's requirements (streamlit missing)" in proc.stderr
    assert "make run" in proc.stderr and ".venv/bin/python launch.py" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- the token and ngrok's errors ----------------------------------------------------------------------------

class StandInSecrets:
    """Kaggle's `kaggle_secrets` exists only on Kaggle; this stands in for its UserSecretsClient."""

    secrets: dict[str, str] = {}

    def get_secret(self, name: str) -> str:
        if name not in self.secrets:
            raise KeyError(name)  # what the real client does is raise; the launcher must not care which error
        return self.secrets[name]


@pytest.fixture
def kaggle_secrets(monkeypatch):
    module = types.ModuleType("kaggle_secrets")
    module.UserSecretsClient = StandInSecrets
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)
    monkeypatch.setattr(StandInSecrets, "secrets", {})
    return StandInSecrets


def test_token_comes_from_the_environment_first_then_the_kaggle_secret(kaggle_secrets):
    kaggle_secrets.secrets = {"NGROK_AUTHTOKEN": "from-kaggle"}
    assert launch.resolve_token({"NGROK_AUTHTOKEN": "from-env"}) == "from-env"
    assert launch.resolve_token({"NGROK_AUTHTOKEN": "  "}) == "from-kaggle"
    assert launch.resolve_token({}) == "from-kaggle"
    kaggle_secrets.secrets = {}
    assert launch.resolve_token({}) is None


def test_no_token_means_nothing_is_started(state_dir, kaggle_secrets):
    with pytest.raises(launch.LaunchError, match="NGROK_AUTHTOKEN") as error:
        launch.start(free_port(), "ngrok", "tiny", state_dir=state_dir, quiet=True)
    assert "Nothing was started" in str(error.value) and not (state_dir / "state.json").exists()


@pytest.mark.parametrize("error, expected", [
    (PyngrokNgrokError("The ngrok process errored on start: authentication failed.", [], ERR_4018),
     "ngrok needs an authtoken"),
    (PyngrokNgrokError("The ngrok process errored on start: authentication failed.", [], ERR_107),
     "authtoken is invalid or was reset"),
    (PyngrokNgrokError("The ngrok process errored on start: authentication failed.", [], ERR_108),
     "another ngrok agent already runs"),
    (PyngrokNgrokHTTPError("ngrok client exception, API returned 502: ERR_NGROK_8012", "http://127.0.0.1:4040",
                           502, "Bad Gateway", {}, "ERR_NGROK_8012"), "the app did not answer"),
    (PyngrokNgrokError("The ngrok process errored on start: tunnel session failed: ERR_NGROK_9999", [],
                       "tunnel session failed: something new\r\n\r\nERR_NGROK_9999"), "ngrok failed (ERR_NGROK_9999)"),
])
def test_ngrok_errors_become_plain_hints_without_the_token(error, expected):
    hint = launch.ngrok_hint(error, TOKEN)
    assert expected in hint
    assert TOKEN not in hint


@pytest.mark.server
def test_the_token_never_reaches_output_logs_or_the_app(state_dir, monkeypatch, capsys):
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    opened = {}

    def connect(addr, proto, pyngrok_config, **options):
        config = Path(pyngrok_config.config_path)
        opened.update(addr=addr, proto=proto, token=pyngrok_config.auth_token, config=config.read_text(),
                      mode=config.stat().st_mode & 0o777, **options)
        return types.SimpleNamespace(public_url="https://example.ngrok.app")

    monkeypatch.setattr(ngrok, "connect", connect)
    monkeypatch.setattr(ngrok, "get_ngrok_process", lambda config: types.SimpleNamespace(proc=None))
    port = free_port()
    launched = launch.start(port, "ngrok", "tiny", state_dir=state_dir)
    assert opened["token"] is None, "never on the agent's command line"
    assert f"authtoken: {TOKEN}" in opened["config"] and opened["mode"] == 0o600
    assert opened["addr"] == str(port) and opened["proto"] == "http"
    assert opened["basic_auth"] == [f"studio:{launched.password}"] and len(launched.password) >= 16
    app_environment = Path(f"/proc/{launched.pid}/environ").read_bytes()
    assert b"NGROK_AUTHTOKEN" not in app_environment and TOKEN.encode() not in app_environment
    assert f"APP_PASSWORD={launched.password}".encode() in app_environment, "the app's own gate is on"

    def failing_connect(*args, **kwargs):
        raise PyngrokNgrokError("The ngrok process errored on start: authentication failed.", [], ERR_107)

    monkeypatch.setattr(ngrok, "connect", failing_connect)
    with pytest.raises(launch.LaunchError) as error:
        launch.start(port, "ngrok", "tiny", state_dir=state_dir)
    assert TOKEN not in str(error.value) and "[token hidden]" not in str(error.value)
    assert health(port) is None, "a failed tunnel stops the app it started"
    printed = capsys.readouterr()
    assert "Public URL: https://example.ngrok.app" in printed.out and launched.password in printed.out
    assert TOKEN not in printed.out + printed.err
    log = (state_dir / "streamlit.log").read_text()
    assert TOKEN not in log and launched.password not in log


@pytest.mark.server
def test_no_auth_warns_and_opens_without_a_password(state_dir, monkeypatch, capsys):
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    options = {}
    monkeypatch.setattr(ngrok, "connect", lambda addr, proto, pyngrok_config, **kw: options.update(kw) or
                        types.SimpleNamespace(public_url="https://open.ngrok.app"))
    monkeypatch.setattr(ngrok, "get_ngrok_process", lambda config: types.SimpleNamespace(proc=None))
    launched = launch.start(free_port(), "ngrok", "tiny", no_auth=True, state_dir=state_dir)
    assert options == {} and launched.password is None
    assert b"APP_PASSWORD" not in Path(f"/proc/{launched.pid}/environ").read_bytes()
    assert "anyone who has it can use this GPU" in capsys.readouterr().out


# -- the notebook ---------------------------------------------------------------------------------------------

def run_notebook(monkeypatch, model_cache, **env: str) -> str:
    """The notebook run top to bottom in its smoke mode (tiny models, no install, no tunnel); its printed text."""
    path = ROOT / "notebooks" / "kaggle_demo.ipynb"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert TOKEN[:4] not in path.read_text() and "NGROK_AUTHTOKEN" in path.read_text()
    for key, value in {"APP_SMOKE_TEST": "1", "APP_STOP": "1", "APP_CACHE_DIR": str(model_cache), **env}.items():
        monkeypatch.setenv(key, value)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        launch.stop()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    pictures = sum("image/png" in out.get("data", {}) for out in outputs)
    return "\n".join([out.get("text", "") or out.get("data", {}).get("text/markdown", "") for out in outputs] +
                     [f"[{pictures} pictures shown]"])


@pytest.mark.server
def test_notebook_is_valid_clean_and_runs_in_order(monkeypatch, model_cache):
    port = free_port()
    text = run_notebook(monkeypatch, model_cache, APP_PORT=str(port))
    assert f"Repository: {ROOT}" in text
    assert "Tiny model set:" in text and "(nothing to fetch)" in text  # the prefetch cell, before the launch
    assert "chosen: sdpa" in text
    assert f"The app is ready at http://127.0.0.1:{port}" in text
    assert "Presets: quality, fast, turbo" in text and "API job: done  ['/api/v1/jobs/" in text  # the API cell
    assert "[0 pictures shown]" in text and "Stopped." in text
    assert health(port) is None


def test_the_notebook_mode_shows_the_pictures_inline_and_saves_them_with_no_app_and_no_tunnel(
        monkeypatch, model_cache, tmp_path):
    from helpers import sample_scene

    folder, outputs = tmp_path / "dataset", tmp_path / "outputs"
    folder.mkdir()
    for i in range(2):
        sample_scene((128, 96)).rotate(20 * i).save(folder / f"photo{i}.png")
    (folder / "notes.png").write_text("not a picture")
    port = free_port()
    text = run_notebook(monkeypatch, model_cache, APP_MODE="notebook", APP_PORT=str(port), PHOTO_FOLDER=str(folder),
                        OUTPUTS_DIR=str(outputs))
    assert "MODE is 'notebook': no app, no tunnel" in text and health(port) is None
    assert re.search(r"\*\*sample_scene.png\*\*: \d+ objects detected, seeds 1, [\d.]+ s; saved in ", text), text
    assert "[3 pictures shown]" in text  # the detections, the control image, the result
    assert len(list(outputs.glob("*/*-result-1-*.png"))) == 1
    assert "2 made, 0 already there, 1 failed." in text  # the folder's batch, in the notebook
    assert sorted(p.name for p in (outputs / "batch").iterdir()) == ["photo0.png", "photo1.png"]


def test_the_app_behind_ngrok_trusts_one_proxy_hop_and_never_sees_the_token(monkeypatch):
    monkeypatch.setenv(launch.TOKEN_NAME, "secret-token")
    monkeypatch.delenv("TRUSTED_PROXY_HOPS", raising=False)
    tunnelled = launch.app_environment("tiny", "pw", "ngrok")
    local = launch.app_environment(None, None, "none")
    assert (tunnelled["TRUSTED_PROXY_HOPS"], tunnelled["APP_PASSWORD"], tunnelled["MODELS"]) == ("1", "pw", "tiny")
    assert "TRUSTED_PROXY_HOPS" not in local and "APP_PASSWORD" not in local
    assert launch.TOKEN_NAME not in tunnelled and launch.TOKEN_NAME not in local
