"""Start the app headless, wait until it answers, and optionally open a password-protected ngrok tunnel.

Safe to run again: it first stops the Streamlit server and the ngrok agent that it started before
(found through its pidfile, never by process name), so a re-run notebook cell neither serves a stale
app nor hits ngrok's one-agent limit.

    python launch.py --tunnel ngrok                  # Kaggle / Colab: prints the public URL and a password
    python launch.py --tunnel none --models tiny     # local smoke run; `python launch.py --stop` ends it

In a notebook, `launch.start(...)` does the same and returns, leaving the tunnel open for the kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
APP = ROOT / "studio" / "serving" / "server.py"  # the page and the HTTP API on one port (an st.App)
STATE_DIR = ROOT / ".launch"
TOKEN_NAME = "NGROK_AUTHTOKEN"
NGROK_HINTS = {
    "ERR_NGROK_4018": "ngrok needs an authtoken: sign up at ngrok.com, then set NGROK_AUTHTOKEN (on Kaggle: "
                      "Add-ons > Secrets, a secret named NGROK_AUTHTOKEN)",
    "ERR_NGROK_105": "the ngrok authtoken is malformed: copy it again from the ngrok dashboard",
    "ERR_NGROK_107": "the ngrok authtoken is invalid or was reset: copy the current one from the ngrok dashboard",
    "ERR_NGROK_108": "another ngrok agent already runs on this account (a free account allows one): stop the other "
                     "notebook or session, or end it at dashboard.ngrok.com/agents, then run this again",
    "ERR_NGROK_8012": "ngrok reached this machine but the app did not answer: wait until the launcher says it is "
                      "ready, or run it again",
}


class LaunchError(RuntimeError):
    """The app or the tunnel could not be started; the message says what to do."""


@dataclass
class Launched:
    local_url: str
    public_url: str | None
    pid: int
    username: str | None = None
    password: str | None = None


def _started_at(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/<pid>/stat field 22); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _runs(pid: int, started: int | None) -> bool:
    """The pid still is the process this launcher started: same pid and same start time (pids get reused,
    and a process that merely mentions ngrok or app.py is none of ours)."""
    return started is not None and _started_at(pid) == started


def _ended(pid: int) -> bool:
    """Gone, or a zombie: every thread has exited and only its parent's wait is left (a `--stop` from another
    shell is not that parent). The main thread alone reads 'Z' also while other threads still run."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # that thread ended while we looked
        if state not in ("Z", "X"):
            return False
    return True


def _terminate(pid: int, group: bool = True, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; `group` for a process started in its own session."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if _ended(pid):
            break  # and whatever of its group is left gets the SIGKILL below
        time.sleep(0.1)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(state_dir: Path = STATE_DIR) -> bool:
    """Stop what an earlier `start` left running; True when something was stopped."""
    state_file = state_dir / "state.json"
    (state_dir / "ngrok.yml").unlink(missing_ok=True)  # where launchers before this one left the token
    if not state_file.exists():
        return False
    try:
        state = json.loads(state_file.read_text())
        int(state["pid"]), str(state["app"])
    except (OSError, ValueError, KeyError, TypeError) as exc:  # empty, cut short or hand-edited
        print(f"Warning: {state_file} is unreadable ({type(exc).__name__}); treating it as stale and removing it.",
              file=sys.stderr)
        state_file.unlink(missing_ok=True)
        return False
    stopped = False
    if "pyngrok" in sys.modules:  # a tunnel opened by this same kernel
        from pyngrok import ngrok

        ngrok.kill()
    if state.get("ngrok_pid") and _runs(state["ngrok_pid"], state.get("ngrok_started")):
        _terminate(state["ngrok_pid"], group=False)
        stopped = True
    if _runs(state["pid"], state.get("started")):
        _terminate(state["pid"])
        stopped = True
    state_file.unlink()
    return stopped


def streamlit_upload_mb() -> int:
    """Streamlit's upload limit, made from MAX_UPLOAD_MB by the app's own settings parser (Settings.
    streamlit_upload_mb: a file over MAX_UPLOAD_MB still reaches the page, which refuses it by name)."""
    from studio.core.settings import Settings

    try:
        return Settings.from_env().streamlit_upload_mb
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def _write_state(state_dir: Path, state: dict) -> None:
    """Atomically: a crash mid-write leaves the old file or the new one, never half of one."""
    temporary = state_dir / "state.json.tmp"
    temporary.write_text(json.dumps(state))
    os.replace(temporary, state_dir / "state.json")


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _answer(proc: subprocess.Popen, url: str, log: Path) -> bytes | None:
    """The body at `url`, or None while the server does not answer it; LaunchError once the server has exited."""
    if proc.poll() is not None:
        raise LaunchError(f"The app exited with code {proc.returncode} before it was ready. Its last log lines "
                          f"({log}):\n{_tail(log)}")
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read() if reply.status == 200 else None
    except OSError:
        return None


def _wait_until_ready(proc: subprocess.Popen, port: int, log: Path, timeout_s: float, ready_timeout_s: float,
                      say: Callable[[str], None]) -> None:
    """Wait for Streamlit's health check (`timeout_s`), then until the server has loaded its models and warmed up
    (/api/v1/health says "ready"), saying each stage once; when the models cannot be loaded, say why in one
    sentence and go on (the page offers the smoke models)."""
    deadline = time.monotonic() + timeout_s
    while _answer(proc, f"http://127.0.0.1:{port}/_stcore/health", log) is None:
        if time.monotonic() > deadline:
            _terminate(proc.pid)
            raise LaunchError(f"Streamlit did not answer on port {port} within {timeout_s:.0f} s. Its last log "
                              f"lines ({log}):\n{_tail(log)}")
        time.sleep(0.5)
    deadline, said = time.monotonic() + ready_timeout_s, None
    while time.monotonic() < deadline:
        try:
            stage = json.loads(_answer(proc, f"http://127.0.0.1:{port}/api/v1/health", log) or b"{}").get("models", "")
        except ValueError:
            stage = ""
        if stage == "ready":
            return
        if stage.startswith("failed: "):
            return say(f"The models could not be loaded: {stage.removeprefix('failed: ')}")
        if stage and stage != said:
            say(f"{stage.capitalize()}…")
            said = stage
        time.sleep(0.5)
    raise LaunchError(f"The models were not ready within {ready_timeout_s:.0f} s (log: {log}). The app keeps "
                      "loading; open it in a while, or start again with a larger --ready-timeout.")


def resolve_token(environ: dict[str, str] | None = None) -> str | None:
    """The ngrok authtoken: the NGROK_AUTHTOKEN variable first, then a Kaggle secret of that name."""
    value = (environ if environ is not None else os.environ).get(TOKEN_NAME, "").strip()
    if value:
        return value
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None
    try:
        return (UserSecretsClient().get_secret(TOKEN_NAME) or "").strip() or None
    except Exception:  # no such secret, or secrets not attached to this notebook
        return None


def ngrok_hint(exc: BaseException, token: str | None = None) -> str:
    """A plain-language message for an ngrok failure, with the token blanked out."""
    code = getattr(exc, "ngrok_error_code", None)
    text = " ".join(filter(None, (str(exc), getattr(exc, "ngrok_error", None) or "")))
    code = code or next(iter(re.findall(r"ERR_NGROK_\d+", text)), None)
    if code in NGROK_HINTS:
        message = f"{NGROK_HINTS[code]} ({code})."
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        message = f"ngrok failed{f' ({code})' if code else ''}: {first}"
    return message.replace(token, "[token hidden]") if token else message


class _Redact(logging.Filter):
    """Hides a secret in pyngrok's log records: the agent's error lines quote the authtoken."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "[ngrok token]"), None
        return True


PYNGROK_LOGGERS = ("pyngrok.process.ngrok", "pyngrok.process", "pyngrok.ngrok", "pyngrok.installer", "pyngrok.agent")


def _private_ngrok_config(token: str) -> Path:
    """The token in an agent config file only this user can read, in a private temporary folder (never the
    project's: on Kaggle that is /kaggle/working, saved with the notebook's output). On the agent's command line
    (what pyngrok does with `auth_token`) every process of the machine could read it in /proc/<pid>/cmdline.
    The caller removes the folder once the agent has read it."""
    folder = Path(tempfile.mkdtemp(prefix="studio-ngrok-"))  # mode 0700
    path = folder / "ngrok.yml"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as config:
        config.write(f'version: "2"\nauthtoken: {token}\n')
    return path


def _open_tunnel(port: int, token: str, credentials: tuple[str, str] | None) -> tuple[str, int | None]:
    from pyngrok import conf, ngrok
    from pyngrok.exception import PyngrokError

    redact = _Redact(token)
    for name in PYNGROK_LOGGERS:
        logging.getLogger(name).addFilter(redact)
    options = {"basic_auth": [f"{credentials[0]}:{credentials[1]}"]} if credentials else {}
    # pyngrok puts NGROK_AUTHTOKEN from the environment on the agent's command line: hide it meanwhile.
    hidden = os.environ.pop(TOKEN_NAME, None)
    path = _private_ngrok_config(token)
    try:
        config = conf.PyngrokConfig(config_path=str(path))
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=config, **options)
        process = ngrok.get_ngrok_process(config)  # (pyngrok writes a default config where it finds none)
    except PyngrokError as exc:
        raise LaunchError(ngrok_hint(exc, token)) from None
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)  # the agent has read it (or failed): no copy stays
        if hidden is not None:
            os.environ[TOKEN_NAME] = hidden
    return tunnel.public_url, getattr(process.proc, "pid", None)



def app_environment(models: str | None, password: str | None, tunnel: str) -> dict[str, str]:
    """The app's environment: this one without the ngrok token (the app never sees it), with the model set, the
    password gate behind ngrok's basic auth, and the tunnel's proxy hop trusted (the agent appends the visitor's
    address to X-Forwarded-For)."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_NAME}
    if models:
        env["MODELS"] = models
    if password:
        env["APP_PASSWORD"] = password
    if tunnel == "ngrok":
        env.setdefault("TRUSTED_PROXY_HOPS", "1")
    return env

def start(port: int = 8501, tunnel: str = "none", models: str | None = None, auth: str | None = None,
          no_auth: bool = False, timeout_s: float = 120.0, state_dir: Path = STATE_DIR, app: Path = APP,
          quiet: bool = False, ready_timeout_s: float = 1800.0) -> Launched:
    """Start (or restart) the app, return once its models are warm; `tunnel="ngrok"` opens the tunnel too."""
    say = (lambda *_: None) if quiet else print
    missing = [name for name in ("streamlit", "diffusers", "ultralytics") if importlib.util.find_spec(name) is None]
    if missing:
        raise LaunchError(f"This Python ({sys.executable}) lacks the app's requirements ({', '.join(missing)} "
                          "missing). Use `make run`, or `.venv/bin/python launch.py …` once `make run` or `make test` "
                          "has made .venv; on Kaggle, run the notebook's install cell first.")
    token = None
    if tunnel == "ngrok":
        token = resolve_token()
        if token is None:
            raise LaunchError(NGROK_HINTS["ERR_NGROK_4018"] + ". Nothing was started.")
    elif tunnel != "none":
        raise LaunchError(f"--tunnel must be ngrok or none, not {tunnel!r}")
    credentials = None
    if tunnel == "ngrok" and not no_auth:
        user, _, password = (auth or "").partition(":")
        credentials = (user or "studio", password or secrets.token_urlsafe(12))
    state_dir.mkdir(parents=True, exist_ok=True)
    if stop(state_dir):
        say("Stopped the app started earlier.")
    if _port_in_use(port):
        raise LaunchError(f"Port {port} is already in use by another program (not one this launcher started). "
                          f"Stop it or pick another port with --port.")
    env = app_environment(models, credentials[1] if credentials else None, tunnel)
    log = state_dir / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(streamlit_upload_mb())]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state = {"pid": proc.pid, "started": _started_at(proc.pid), "port": port, "app": str(app)}
    _write_state(state_dir, state)
    _wait_until_ready(proc, port, log, timeout_s, ready_timeout_s, say)
    launched = Launched(local_url=f"http://127.0.0.1:{port}", public_url=None, pid=proc.pid)
    say(f"The app is ready at {launched.local_url} (log: {log}).")
    if tunnel == "ngrok":
        if no_auth:
            say("WARNING: the public URL has no password: anyone who has it can use this GPU.")
        try:
            launched.public_url, state["ngrok_pid"] = _open_tunnel(port, token, credentials)
            state["ngrok_started"] = _started_at(state["ngrok_pid"]) if state["ngrok_pid"] else None
        except LaunchError:
            stop(state_dir)
            raise
        _write_state(state_dir, state)
        say(f"Public URL: {launched.public_url}")
        if credentials:
            launched.username, launched.password = credentials
            say(f"User: {launched.username}  Password: {launched.password}  (the page asks for the password "
                "once more)")
    return launched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the app headless, optionally behind an ngrok tunnel.")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--tunnel", choices=("ngrok", "none"), default="none")
    parser.add_argument("--models", choices=("tiny", "sd15"), default=None, help="default: the MODELS variable")
    parser.add_argument("--auth", default=None, help="user:password for the tunnel (default: a generated one)")
    parser.add_argument("--no-auth", action="store_true", help="open the tunnel without a password (not advised)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the app to answer")
    parser.add_argument("--ready-timeout", type=float, default=1800.0,
                        help="seconds to wait for the models to load and warm up")
    parser.add_argument("--stop", action="store_true", help="stop what an earlier launch started, then exit")
    parser.add_argument("--prefetch", action="store_true",
                        help="fetch every weight the app will use (progress bar, total size), then exit")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prefetch:
        try:
            from studio.core.settings import Settings
            from studio.serving import prefetch

            prefetch.run(Settings.from_env(models=args.models))
        except ModuleNotFoundError as exc:
            print(f"Could not prefetch: {exc}. Run it with the project's Python: .venv/bin/python launch.py "
                  "--prefetch (make test or make run creates .venv).", file=sys.stderr)
            return 1
        except prefetch.PrefetchError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if args.stop:
        print("Stopped." if stop(args.state_dir) else "Nothing to stop.")
        return 0
    try:
        launched = start(args.port, args.tunnel, args.models, args.auth, args.no_auth, args.timeout,
                         state_dir=args.state_dir, ready_timeout_s=args.ready_timeout)
    except LaunchError as exc:
        print(f"Could not start: {exc}", file=sys.stderr)
        return 1
    if launched.public_url is None:
        print("It keeps running in the background; stop it with: python launch.py --stop")
        return 0
    print("Keep this running to keep the tunnel open; Ctrl-C stops the app and the tunnel.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
