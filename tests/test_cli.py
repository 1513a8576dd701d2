"""The `lstm-stream` command as a newcomer meets it: help, info, control, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, VehicleStack, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lstm_stream", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_serve_help_explains_the_sockets_and_shows_examples() -> None:
    done = cli("serve", "--help")
    assert done.returncode == 0
    for needle in ("--input ENDPOINT", "--output ENDPOINT", "--control ENDPOINT",
                   "--set SECTION.FIELD=VALUE", "examples:", "docs/protocol.md",
                   "tcp://127.0.0.1:5555"):
        assert needle in done.stdout, needle


def test_info_describes_the_shipped_model() -> None:
    done = cli("info", str(MODEL))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "x [batch, 16]" in out and "y [batch, 2]  (steer, accel)" in out
    assert "h -> h_out [layers=2, batch, hidden=64]" in out
    assert "c -> c_out [layers=2, batch, hidden=64]" in out
    assert "contract   ok" in out and "LSTM x2" in out


def test_info_json_is_machine_readable() -> None:
    info = json.loads(cli("info", str(MODEL), "--json").stdout)
    assert info["features"] == 16 and info["outputs"] == 2 and info["cell"] == "lstm"
    assert [s["input"] for s in info["states"]] == ["h", "c"]
    assert len(info["sha256"]) == 64


def test_info_on_a_bad_file_says_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a model")
    done = cli("info", str(bad))
    assert done.returncode == 1
    assert "notes.onnx" in done.stderr and done.stderr.startswith("lstm-stream info: error:")
    missing = cli("info", str(tmp_path / "missing.onnx"))
    assert missing.returncode == 1 and "missing.onnx" in missing.stderr


def test_bad_config_value_is_a_usage_error() -> None:
    done = cli("serve", str(MODEL), "--set", "state.max_streams=0")
    assert done.returncode == 2
    assert "'state.max_streams' must be between 1 and 1000000; got 0" in done.stderr


def test_busy_port_gives_a_clear_error() -> None:
    with VehicleStack() as stack:
        # the vehicle stack already binds this port: serve cannot bind its output there
        busy = stack.sensors_endpoint
        done = cli("serve", str(MODEL), "--output", busy, "--control",
                   "tcp://127.0.0.1:0")
    assert done.returncode == 1
    assert "Could not bind the output socket" in done.stderr and busy in done.stderr


def test_control_command_against_a_live_runner() -> None:
    with VehicleStack() as stack, serve_process(MODEL, stack.sensors_endpoint) as served:
        done = cli("control", "status", "--control", served.control)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["ok"] and status["model"]["features"] == 16
        unknown = cli("control", "reset", "--stream", "ghost", "--control", served.control)
        assert unknown.returncode == 1 and "unknown stream 'ghost'" in unknown.stdout


def test_control_command_without_a_runner_times_out_clearly() -> None:
    from support import free_endpoint

    done = cli("control", "status", "--control", free_endpoint(), "--timeout", "0.3")
    assert done.returncode == 1
    assert "No reply from the runner's control socket" in done.stderr


@pytest.mark.slow
def test_demo_runs_and_outputs_match_the_reference(tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    done = cli("demo", "--rate", "0", "--plot", str(plot))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: OK" in done.stdout
    assert "sent 600, outputs 600, stepped 600, rejected 0" in done.stdout
    assert "served (state carried) MAE" in done.stdout and "round trip  p50" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
