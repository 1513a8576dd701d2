"""lstm-stream bench --eval: the floor and every way of evaluating, in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.support import REPO


def test_bench_eval_quick_writes_every_row_with_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "lstm_stream", "bench", "--eval", "--quick", "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["suite"] == "eval" and report["messages"] == 20 * 200
    rows = {r["name"]: r for r in report["rows"]}
    names = list(rows)
    assert names[0] == "floor: read + decode" and names[1].startswith("floor b: the model alone")
    assert len(names) == 8
    assert "one message per call" in names[2] and "batched" in names[3]
    assert "batch messages" in names[7]  # the same readings, one message per tick
    floor = report["rows"][0]["steps_per_s"]
    for row in report["rows"]:
        # every message read, every message stepped (each of two logs)
        assert row["messages"] == 4000 * row.get("logs", 1)
        assert row["ratio_to_floor"] == pytest.approx(row["steps_per_s"] / floor, abs=2e-3)
    assert report["workers_2_over_1"] == pytest.approx(
        report["rows"][4]["steps_per_s"] / report["rows"][3]["steps_per_s"], abs=2e-3)
    two = [rows[f"eval, batched, 4 logs, --workers {n}"]["steps_per_s"] for n in (1, 2)]
    assert report["logs_workers_2_over_1"] == pytest.approx(two[1] / two[0], abs=2e-3)
    model = report["rows"][1]["steps_per_s"]
    assert report["bound_steps_per_s"] == pytest.approx(1 / (1 / floor + 1 / model), rel=1e-3)
    assert min(floor, model) / 2 <= report["bound_steps_per_s"] <= min(floor, model)
    # two processes doing the floor's work at once: more than one alone gives, at most
    # twice (with room for noise)
    assert 0.5 < report["two_processes_over_one"] < 2.5
    assert "2 workers / 1 worker" in done.stdout and "parallel ceiling" in done.stdout


def test_bench_eval_refuses_a_missing_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "lstm_stream", "bench", "--eval", str(tmp_path / "no.mcap")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no such log file" in done.stderr
