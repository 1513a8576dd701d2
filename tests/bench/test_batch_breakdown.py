"""tools/batch_breakdown.py: where a batch message's time goes, each part printed."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers.support import REPO


def test_every_part_is_printed_with_a_time() -> None:
    done = subprocess.run([sys.executable, "tools/batch_breakdown.py", "--streams", "10",
                           "--messages", "30"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    times = dict(re.findall(r"^\s*(\S.*?\S)\s+(\d+\.\d+) us per row$", done.stdout, re.M))
    assert set(times) == {"decode", "step (admit, backend call, commit)", "encode output",
                          "backend.step alone, same batch", "admit_steady",
                          "gather the states", "backend call", "finite check",
                          "commit_steady"}, done.stdout
    assert float(times["backend call"]) > 0 and float(times["step (admit, backend call, "
                                                          "commit)"]) > 0
