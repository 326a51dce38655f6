"""The two lanes of `make test` (tests/lanes.py): every Ray test in the lane that owns Ray, and each lane on its
own half of the cores."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from subprocess import CompletedProcess

import pytest

import lanes
from lanes import SECOND_LANE, halves

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_that_uses_ray_is_in_the_second_lane_and_the_lane_names_real_files():
    """The first lane must never start or find a Ray process: the second lane's `ray stop --force` ends them all."""
    using_ray = {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                 if path != Path(__file__) and ("ray_address" in path.read_text() or "RAY_ADDRESS" in path.read_text())}
    assert using_ray == {"tests/test_ray_jobs.py", "tests/browser/test_browser_ray.py"}
    assert using_ray <= set(SECOND_LANE)
    assert all((ROOT / path).is_file() for path in SECOND_LANE)


@pytest.mark.parametrize(("cores", "first", "second"), [
    ({0, 1}, {0}, {1}),
    ({0, 1, 2, 3}, {0, 1}, {2, 3}),
    ({4, 5, 6}, {4}, {5, 6}),
    ({3}, {3}, {3}),  # one core: both lanes share it rather than one lane getting none
])
def test_the_lanes_split_the_cores_between_them(monkeypatch, cores, first, second):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    assert halves() == (first, second)


def test_without_core_pinning_the_suite_runs_in_one_process(monkeypatch, tmp_path):
    """macOS has no `sched_setaffinity`: one pytest over every file, as lanes free to share the cores were no
    quicker."""
    ran: list[list[str]] = []
    monkeypatch.delattr(os, "sched_setaffinity")
    monkeypatch.setattr(subprocess, "run", lambda command: ran.append(command) or CompletedProcess(command, 3))
    assert lanes.main(["-x"], tmp_path / "second.log") == 3
    assert [command[1:] for command in ran] == [["-m", "pytest", "-x"]]
    assert not (tmp_path / "second.log").exists()
