"""Real servers (`launch.py --tunnel none`, the tiny models) shared by the tests: one per environment for the whole
test session, started on first use. A server costs a fresh Python that imports torch, diffusers and Ultralytics,
loads the models and warms them up; a test costs seconds. Each test gets its server idle (no job running or
waiting) and leaves it with its own visitors, so the next test meets it as the first did."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

import launch

from helpers import free_port

IDLE_TIMEOUT_S = 180.0  # a job a test left behind is cancelled once nobody polls it (ABANDON_S, 60 s by default)


@dataclass
class Server:
    url: str
    state: Path  # its launch folder; the server's log is state / "streamlit.log"
    pid: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return (self.state / "streamlit.log").read_text()

    def headers(self) -> dict[str, str]:
        password = self.env.get("APP_PASSWORD")
        return {"Authorization": f"Bearer {password}"} if password else {}

    def queue(self) -> tuple[int, int]:
        """(running, waiting), as /api/v1/info counts them."""
        info = requests.get(f"{self.url}/api/v1/info", headers=self.headers(), timeout=30).json()
        return info["queue"]["running"], info["queue"]["waiting"]

    def wait_until_idle(self, timeout_s: float = IDLE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while (counts := self.queue()) != (0, 0):
            assert time.monotonic() < deadline, f"an earlier test left jobs on this server: {counts}"
            time.sleep(0.2)


class Servers:
    """Servers by environment. `get(**env)` starts one with exactly `base` plus `env` (never the calling test's
    own environment, which a monkeypatch may have changed) or hands back the one already running."""

    def __init__(self, folder: Path, base: dict[str, str]) -> None:
        self.folder, self.base = folder, base
        self.running: dict[tuple[tuple[str, str], ...], Server] = {}

    def get(self, **env: str) -> Server:
        key = tuple(sorted(env.items()))
        if key not in self.running:
            self.running[key] = self._start(env)
        server = self.running[key]
        server.wait_until_idle()
        return server

    def _start(self, env: dict[str, str]) -> Server:
        state = self.folder / f"server-{len(self.running)}"
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update({**self.base, **env})
        try:
            started = launch.start(free_port(), "none", "tiny", state_dir=state, quiet=True)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return Server(started.local_url, state, started.pid, env)

    def stop(self, server: Server) -> None:
        launch.stop(server.state)
        self.running = {key: kept for key, kept in self.running.items() if kept is not server}

    def stop_all(self) -> None:
        for server in list(self.running.values()):
            self.stop(server)
