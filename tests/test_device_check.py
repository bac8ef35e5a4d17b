"""``benchmarks/device_check.sh`` on this machine with no CUDA device visible: its GPU parts skip
by device type, it still writes its report, and its declared budgets fit the 8 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
LIMIT_SECONDS = 8 * 60


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    # No CUDA device is visible, whatever this machine has: the GPU parts must skip, not run.
    variables = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_CHECK_BUDGET_")}
    variables.update(CUDA_VISIBLE_DEVICES="", **env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=variables, capture_output=True, text=True,
                          timeout=180, check=False)


def _budgets(**env: str) -> dict[str, float]:
    result = _run("--budgets", **env)
    assert result.returncode == 0, result.stderr
    return {name: float(value) for name, value in (line.split() for line in result.stdout.splitlines())}


def _rows(report: str) -> dict[str, tuple[str, str, str]]:
    """The parts table: part name -> (budget, seconds taken, status)."""
    rows = re.findall(r"^\| (\w+): [^|]* \| ([\d.]+) \| ([\d.]+) \| ([^|]+) \|$", report, re.MULTILINE)
    return {name: (budget, took, status) for name, budget, took, status in rows}


def test_declared_budgets_fit_eight_minutes():
    budgets = _budgets()
    parts = {name: seconds for name, seconds in budgets.items() if name not in ("grace", "limit")}
    assert set(parts) == {"preflight", "tests", "throughput"}
    assert budgets["limit"] == LIMIT_SECONDS
    assert all(seconds > 0 for seconds in parts.values())
    assert sum(parts.values()) + budgets["grace"] * len(parts) <= LIMIT_SECONDS


def test_budgets_over_the_limit_are_refused():
    result = _run("--budgets", DEVICE_CHECK_BUDGET_TESTS="400")
    assert result.returncode == 2
    assert "over the 480 s limit" in result.stderr
    assert _run("--budgets", DEVICE_CHECK_BUDGET_TESTS="3 min").returncode == 2


def test_without_a_gpu_the_gpu_parts_skip_and_the_report_is_written(tmp_path):
    start = time.monotonic()
    result = _run(str(tmp_path / "check"))
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "check" / "device_check.md").read_text()
    assert "Machine: no CUDA device (torch.cuda.is_available() is False); CPU " in report
    assert "Python packages missing: none." in report
    rows, budgets = _rows(report), _budgets()
    assert set(rows) == {"preflight", "tests", "throughput"}
    for name, (budget, took_part, status) in rows.items():
        assert float(budget) == budgets[name], name
        if name == "preflight":
            assert status == "ok" and 0 < float(took_part) <= budgets[name]
        else:
            assert status == "skipped: no CUDA device" and float(took_part) == 0
    assert report.count("skipped: no CUDA device.") == 2  # the tests' and the throughput's sections
    assert took < budgets["preflight"] + 30  # only the preflight ran


def test_a_part_over_its_budget_is_stopped_and_reported(tmp_path):
    """A preflight given 0.1 s cannot start Python with torch: it is stopped, the report says so,
    the GPU parts do not run, and the check fails."""
    result = _run(str(tmp_path / "check"), DEVICE_CHECK_BUDGET_PREFLIGHT="0.1")
    assert result.returncode == 1
    report = (tmp_path / "check" / "device_check.md").read_text()
    rows = _rows(report)
    assert rows["preflight"][2] == "timed out after its 0.1 s"
    assert float(rows["preflight"][1]) < 0.1 + 5 + 2  # the budget, the grace to stop, the clock
    assert rows["tests"][2] == rows["throughput"][2] == "skipped: the preflight did not finish"
    assert "Machine: unknown (the preflight did not finish; see machine.txt)." in report


def test_two_folders_are_refused():
    result = _run("one", "two")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert not (ROOT / "one").exists()
