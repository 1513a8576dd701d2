"""`lstm-stream eval --ray` against a real Ray head started here, on loopback only.

One head (a `ray start --head --block` subprocess) serves the module; every eval is
a real `lstm-stream` subprocess on real MCAP logs, and its report must equal the
local run's. Nothing of Ray or of the evaluator is mocked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lstm_stream.cli.main import main
from lstm_stream.core.errors import EvaluationError
from lstm_stream.core.progress import Progress
from lstm_stream.evaluate.fleet import evaluate
from lstm_stream.evaluate.options import EvalOptions

from helpers.logs import write_drive
from helpers.support import REPO, run_python

MODEL = str(REPO / "models" / "random_lstm.onnx")
# find_spec, not importorskip: importing ray here would fix its settings before a test
# sets them (test_progress_counts_logs_as_their_tasks_finish runs ray.init in-process).
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="needs ray (the [cluster] extra)")
HEAD_START_TIMEOUT_S = 90.0
TOKEN = secrets.token_hex(16)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_env() -> dict[str, str]:
    """The environment of the head and of every eval: nothing leaves this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | loopback_settings()


def loopback_settings() -> dict[str, str]:
    unused = f"http://127.0.0.1:{free_port()}"
    return {
        # What docs/logs.md recommends: Ray's token authentication, one token for all.
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
        # Ray's single-machine mode: the node's IP is 127.0.0.1 and every Ray socket
        # (GCS, raylet, agents, workers) binds to loopback instead of all interfaces.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # `ray start` asks the cloud metadata service (169.254.169.254) which cloud it
        # runs on even with usage stats off; an unused loopback proxy keeps it here.
        "http_proxy": unused, "HTTP_PROXY": unused, "https_proxy": unused,
        "HTTPS_PROXY": unused, "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def run_eval(*args: str, cwd: Path, env: dict[str, str] | None = None,
             code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`lstm-stream eval ARGS` as a subprocess (``code``: a -c program instead of -m)."""
    head = ["-c", code] if code else ["-m", "lstm_stream"]
    return subprocess.run([sys.executable, *head, "eval", *args], cwd=cwd,
                          env=env or loopback_env(), capture_output=True, text=True,
                          timeout=180)


def report(directory: Path) -> Any:
    """report.json with the report directory's name taken out of its paths."""
    text = (directory / "report.json").read_text()
    return json.loads(text.replace(f'"{directory.name}/', '"<report>/'))


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a Ray head with 2 CPUs, stopped (by its pid) at the end."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs ray (the [cluster] extra)")
    ray = Path(sys.executable).with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="lsray-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    log_path = temp / "head.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
             "--disable-usage-stats", "--temp-dir", str(temp / "ray")],
            env=loopback_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_started(proc, log_path)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_started(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while "Ray runtime started" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the Ray head did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes], temp: Path) -> None:
    """SIGTERM to `ray start --block` stops what it started; kill any straggler by pid."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for pid in _processes_using(temp):
        with contextlib.suppress(ProcessLookupError):  # gone by itself meanwhile
            os.kill(pid, signal.SIGKILL)


def _processes_using(temp: Path) -> list[int]:
    """Processes whose command line names our head's temp directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(temp) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def write_logs(directory: Path, count: int) -> list[str]:
    for i in range(count):
        write_drive(directory / f"d{i}.mcap", streams=2, steps=25, seed=i)
    return [f"d{i}.mcap" for i in range(count)]


# -- against the head ------------------------------------------------------------------


@pytest.mark.slow
def test_report_on_ray_equals_the_local_report(ray_head: str, tmp_path: Path) -> None:
    logs = write_logs(tmp_path, 3)
    common = [*logs, "--model", MODEL, "--target-topic", "controls"]
    local = run_eval(*common, "--report", "local", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    on_ray = run_eval(*common, "--report", "ray", "--ray", ray_head, cwd=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    assert report(tmp_path / "ray") == report(tmp_path / "local")
    assert (tmp_path / "ray" / "report.md").read_text() == (
        tmp_path / "local" / "report.md").read_text()
    for log in logs:
        name = log.replace(".mcap", ".policy.mcap")
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
        assert (tmp_path / "ray" / log.replace(".mcap", ".predictions.png")).exists()
    assert on_ray.stdout.replace("ray/", "local/") == local.stdout
    assert f"joined the Ray cluster at {ray_head}" in on_ray.stderr


@pytest.mark.slow
def test_damaged_logs_are_reported_as_the_local_path_does(ray_head: str,
                                                          tmp_path: Path) -> None:
    write_drive(tmp_path / "drive.mcap", streams=1, steps=300, chunk_bytes=4000)
    data = (tmp_path / "drive.mcap").read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) // 2])
    env = loopback_env() | {"RAY_ADDRESS": ray_head}  # and --ray auto finds it there
    on_ray = run_eval("drive.mcap", "cut.mcap", "--model", MODEL, "--report", "ray",
                      "--ray", "auto", cwd=tmp_path, env=env)
    assert on_ray.returncode == 0, on_ray.stderr
    local = run_eval("drive.mcap", "cut.mcap", "--model", MODEL, "--report", "local",
                     cwd=tmp_path)
    assert report(tmp_path / "ray") == report(tmp_path / "local")
    (cut,) = [line for line in on_ray.stdout.splitlines() if "damaged" in line]
    assert cut.startswith("eval: cut.mcap: damaged, at byte offset") and cut in local.stdout


@pytest.mark.slow
def test_unusable_and_unreadable_logs_are_named_and_the_others_still_run(
        ray_head: str, tmp_path: Path) -> None:
    write_logs(tmp_path, 1)
    (tmp_path / "garbage.mcap").write_bytes(b"not an mcap file" * 64)
    on_ray = run_eval("d0.mcap", "garbage.mcap", "missing.mcap", "--model", MODEL,
                      "--report", "ray", "--ray", ray_head, cwd=tmp_path)
    assert on_ray.returncode == 1
    error = on_ray.stderr.strip().splitlines()[-1]
    assert error.startswith("lstm-stream eval: error: ")
    # The damaged log is reported in the words of the local process pool ...
    with pytest.raises(EvaluationError) as local:
        evaluate([tmp_path / "garbage.mcap", tmp_path / "d0.mcap"],
                 EvalOptions(model=MODEL, output_dir=str(tmp_path / "local")), workers=2)
    assert str(local.value).replace(str(tmp_path) + "/", "") in error
    # ... the one no node can read names the node and the shared storage it needs ...
    assert "Log 'missing.mcap' (relative to " in error and "cannot be read on Ray node" in error
    assert "(127.0.0.1)" in error and "storage every node of the Ray cluster" in error
    # ... and the good log was evaluated all the same.
    assert (tmp_path / "ray" / "d0.policy.mcap").stat().st_size > 0


def network_address() -> str | None:
    """This machine's address towards the outside, as Ray finds it (UDP: nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 53))  # TEST-NET-1: connect() only picks the route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_a_loopback_only_head_without_single_machine_mode_here_is_explained(
        ray_head: str, tmp_path: Path) -> None:
    if network_address() is None:
        pytest.skip("this machine has no network address for Ray to use instead of loopback")
    logs = write_logs(tmp_path, 1)
    env = loopback_env()
    del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]
    started = time.monotonic()
    done = run_eval(*logs, "--model", MODEL, "--ray", ray_head, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert time.monotonic() - started < 30  # not Ray's many minutes of retries
    assert f"Ray connects to '{ray_head}' through this machine's address" in done.stderr
    assert "Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for lstm-stream eval too" in done.stderr


class RecordedProgress(Progress):
    """A real Progress that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def start(self, description: str, total: int | None = None) -> None:
        self.events.append(("start", description, total))

    def advance(self, units: int = 1, status: str = "") -> None:
        self.events.append(("advance", units, status))

    def close(self) -> None:
        self.events.append(("close",))


@pytest.mark.slow
def test_progress_counts_logs_as_their_tasks_finish(ray_head: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in loopback_settings().items():  # this process is the driver here
        monkeypatch.setenv(key, value)
    logs = [tmp_path / name for name in write_logs(tmp_path, 3)]
    progress = RecordedProgress()
    result = evaluate(logs, EvalOptions(model=MODEL, output_dir=str(tmp_path / "out")),
                      progress=progress, ray_address=ray_head)
    assert [Path(r.log) for r in result.logs] == logs  # in the order given, however they ran
    assert progress.events[0] == ("start", f"eval logs on Ray {ray_head}", 3)
    assert sorted(progress.events[1:-1]) == [("advance", 1, f"d{i}.mcap") for i in range(3)]
    assert progress.events[-1] == ("close",)


# -- without a head ------------------------------------------------------------------------


@needs_ray
def test_unreachable_address_is_named_with_how_to_start_a_head(tmp_path: Path) -> None:
    logs = write_logs(tmp_path, 1)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = run_eval(*logs, "--model", MODEL, "--ray", address, cwd=tmp_path)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    assert f"Could not reach a Ray head at '{address}' (Connection refused)" in done.stderr
    assert "ray start --head" in done.stderr


def test_missing_ray_says_which_extra_to_install_and_plain_eval_needs_no_ray(
        tmp_path: Path) -> None:
    logs = write_logs(tmp_path, 1)
    without_ray = ("import sys; sys.modules['ray'] = None\n"  # any `import ray` now fails
                   "from lstm_stream.cli.main import main\n"
                   "code = main(sys.argv[1:])\n"
                   "assert 'lstm_stream.evaluate.ray' not in sys.modules or '--ray' in sys.argv\n"
                   "sys.exit(code)\n")
    done = run_eval(*logs, "--model", MODEL, "--ray", "127.0.0.1:6379", cwd=tmp_path,
                    code=without_ray)
    assert done.returncode == 1
    assert "--ray needs the 'ray' package" in done.stderr
    assert "pip install 'lstm-stream[cluster]'" in done.stderr
    plain = run_eval(*logs, "--model", MODEL, cwd=tmp_path, code=without_ray)
    assert plain.returncode == 0, plain.stderr
    assert (tmp_path / "d0.policy.mcap").exists()


def test_the_runtime_never_imports_ray() -> None:
    code = ("import sys\n"
            "import lstm_stream.serve.runner, lstm_stream.cli.main, lstm_stream.evaluate.run\n"
            "from lstm_stream.cli.main import build_parser\n"
            "build_parser()\n"
            "assert 'ray' not in sys.modules and 'lstm_stream.evaluate.ray' not in sys.modules\n")
    done = run_python(code)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--ray", "localhost"], "expected HOST:PORT of a Ray head"),
    (["--ray", "127.0.0.1:6379", "--workers", "2"], "Give either --ray"),
])
def test_bad_ray_arguments_are_usage_errors(tmp_path: Path, extra: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = write_drive(tmp_path / "d.mcap", steps=2)
    assert main(["eval", str(log), "--model", MODEL, *extra]) == 2
    assert message in capsys.readouterr().err
