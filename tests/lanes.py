"""`make test`: the whole suite as two pytest processes at once, one per core of the 2-core CI machine.

Most tests wait on a server, Ray or Chromium: one pytest process kept one core busy on average (user plus system
time about equal to the wall-clock time). The second lane owns Ray, because its `ray stop --force` ends every Ray
process on the machine and the test of an unreachable cluster must find none running, so every Ray test is in it.
The files are split so that each lane takes about half of the one-process time (`--durations=0` on 2026-12-07).
The first lane prints as it runs; the second lane's output follows it; the exit status fails if either lane does.
"""

from __future__ import annotations

import subprocess
import sys
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


def main(extra: list[str], log: Path) -> int:
    """Runs both lanes, `extra` going to each pytest; the second lane's output is kept in `log`."""
    with log.open("w") as second_output:
        second = subprocess.Popen(pytest("-p", "no:cacheprovider", *SECOND_LANE, *extra),
                                  stdout=second_output, stderr=subprocess.STDOUT)
        first = subprocess.run(pytest(*(f"--ignore={path}" for path in SECOND_LANE), *extra)).returncode
        second_status = second.wait()
    print(f"\n===== the second lane ({', '.join(SECOND_LANE)}), run beside the first =====", flush=True)
    sys.stdout.write(log.read_text())
    return first or second_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Path(".venv/second-lane.log")))
