"""Examples in docs/ run as written, against real processes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.support import REPO, free_endpoint, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


def python_block(doc: str, heading: str) -> str:
    """The first ```python block after ``heading`` in docs/``doc``."""
    text = (REPO / "docs" / doc).read_text()
    assert heading in text, f"{doc} has no section {heading!r}"
    match = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S)
    assert match, f"{doc}: no python block under {heading!r}"
    ast.parse(match.group(1))
    return match.group(1)


@pytest.mark.parametrize("runner_first", [False, True])
def test_the_minimal_vehicle_stack_of_the_protocol_works_as_written(
        tmp_path: Path, runner_first: bool) -> None:
    code = python_block("protocol.md", "## A minimal vehicle stack in Python")
    ends = {port: free_endpoint() for port in ("5555", "5556", "5557")}
    for port, endpoint in ends.items():  # the same code, on free ports
        code = code.replace(f"tcp://127.0.0.1:{port}", endpoint)
    script = tmp_path / "stack.py"
    script.write_text(code)

    def start_client() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    client = None if runner_first else start_client()
    with serve_process(MODEL, ends["5555"], output=ends["5556"], control=ends["5557"]):
        client = client or start_client()
        out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert "'stream': 'car1'" in out and "'seq': 0" in out and "'y': [" in out
