"""Each visitor's page settings, kept on the server by visitor token so that a reload (a new Streamlit session)
opens the page as the visitor left it. Small JSON, bounded: at most MOST visitors (the least recently saved go
first), each for KEEP_S, each at most MAX_BYTES (a larger one is not kept)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MOST = 1000
KEEP_S = 7 * 24 * 3600.0
MAX_BYTES = 64 * 1024


class SavedSettings:
    def __init__(self, most: int = MOST, keep_s: float = KEEP_S, clock: Callable[[], float] = time.monotonic):
        self.most, self.keep_s, self.clock = most, keep_s, clock
        self._kept: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def save(self, owner: str, values: dict[str, Any]) -> bool:
        """Keep `values` (JSON-able) for `owner`; False when they are too large to keep."""
        text = json.dumps(values, separators=(",", ":"))
        with self._lock:
            if len(text.encode()) > MAX_BYTES:
                self._kept.pop(owner, None)
                return False
            self._kept[owner] = (self.clock(), text)
            self._kept.move_to_end(owner)
            while len(self._kept) > self.most:
                self._kept.popitem(last=False)
        return True

    def load(self, owner: str) -> dict[str, Any] | None:
        """The owner's settings as last saved, or None (never saved, or longer ago than keep_s)."""
        with self._lock:
            kept = self._kept.get(owner)
            if kept is not None and self.clock() - kept[0] > self.keep_s:
                del self._kept[owner]
                kept = None
        return None if kept is None else json.loads(kept[1])

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)
