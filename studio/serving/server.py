"""The server: Streamlit's page (app.py) and the HTTP API (api.py) on one port, behind one gate (gate.py).

`streamlit run studio/serving/server.py` (what `make run` and launch.py do) finds `app` below, an `st.App`, and
serves it with uvicorn; `python -m uvicorn studio.serving.server:app` works too.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `streamlit run` puts this file's folder first on the path, not the project's
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.gzip import GZipMiddleware  # noqa: E402

from studio.serving import api, gate, memory, state  # noqa: E402


@asynccontextmanager
async def warmed_up(app: Any) -> AsyncIterator[None]:
    """The models load and warm up as the server starts, not when the first visitor arrives (launch.py waits for
    /api/v1/health to say "ready" before it prints the URL); they are let go when it stops."""
    threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
    yield
    state.reset()  # a server that stops ends its jobs and deletes the Ray application it deployed


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # the warm-up's too
memory.return_large_blocks()
# gzip: Streamlit's own scripts are 6.7 MB as they are, about a quarter of that compressed, for each new browser.
app = st.App(str(ROOT / "app.py"), routes=api.routes(), lifespan=warmed_up,
             middleware=[Middleware(gate.Gate), Middleware(GZipMiddleware, minimum_size=1024)])
