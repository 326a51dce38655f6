"""`make test`: the whole suite as two pytest processes at once, each on half of the machine's cores.

Most tests wait on a server, Ray or Chromium: one pytest process kept one of the CI machine's two cores busy on
average (user plus system time about equal to the wall-clock time). Two lanes free to use both cores took 12 minutes,
no better; each held to one core, 8 (each lane's torch then takes one thread, so neither spins waiting for a core
the other holds). The second lane owns Ray, because its `ray stop --force` ends every Ray process on the machine
and the test of an unreachable cluster must find none running, so every Ray test is in it. The files are split so
that each lane takes about half of the one-process time (`--durations=0` on 2026-12-07). The first lane prints as
it runs; the second lane's output follows it; the exit status fails if either lane does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SECOND_LANE = [
    "tests/test_ray_jobs.py",
    "tests/browser/test_browser_ray.py",
    "tests/browser/test_browser_visitors.py",
    "tests/test_launch.py",
    "tests/test_notebook_kaggle.py",
]


def pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def on_cores(cores: set[int]) -> Callable[[], None]:
    """A `preexec_fn` that keeps a lane, and every server, browser and Ray process it starts, on `cores`: torch
    takes one thread per core it may use (studio/engine/devices.py), so two lanes never ask for more threads
    than the machine has, where each would otherwise take every core and both would wait on each other's."""
    return lambda: os.sched_setaffinity(0, cores)


def halves() -> tuple[set[int], set[int]]:
    """The first half of the cores this process may use, and the rest; one core is the two lanes' to share."""
    cores = sorted(os.sched_getaffinity(0))
    middle = max(1, len(cores) // 2)
    return set(cores[:middle]), set(cores[middle:] or cores)


def main(extra: list[str], log: Path) -> int:
    """Runs both lanes, `extra` going to each pytest; the second lane's output is kept in `log`. Where a process
    cannot be held to cores (macOS has no `sched_setaffinity`), the suite runs in one process: lanes free to share
    the cores were no quicker."""
    if not hasattr(os, "sched_setaffinity"):
        return subprocess.run(pytest(*extra)).returncode
    first_cores, second_cores = halves()
    with log.open("w") as second_output:
        second = subprocess.Popen(pytest("-p", "no:cacheprovider", *SECOND_LANE, *extra),
                                  stdout=second_output, stderr=subprocess.STDOUT, preexec_fn=on_cores(second_cores))
        first = subprocess.run(pytest(*(f"--ignore={path}" for path in SECOND_LANE), *extra),
                               preexec_fn=on_cores(first_cores)).returncode
        second_status = second.wait()
    print(f"\n===== the second lane ({', '.join(SECOND_LANE)}), run beside the first =====", flush=True)
    sys.stdout.write(log.read_text())
    return first or second_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Path(".venv/second-lane.log")))
