"""CURVE authentication, the loopback rule for control, model pinning, no pickle.

Real `lstm-stream serve` processes with real key files and real sockets: an
allow-listed client is answered, a client with another key or no key is not,
and cannot reset state (docs/security.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from lstm_stream.cli.main import main
from lstm_stream.core.config.runner import is_loopback, load_runner_config
from lstm_stream.core.errors import ConfigError, SecurityError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import ControlError, control_request
from lstm_stream.serve.security import ClientKeys, generate_keys, load_server_keys
from lstm_stream.serve.security.curve import ENV_CLIENT_KEY, ENV_SERVER_KEY

from helpers.support import REPO, VehicleStack, free_endpoint, serve_process

MODEL = REPO / "models" / "random_lstm.onnx"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A runner pair, two allowed clients, and an intruder whose key is not allowed."""
    root = tmp_path_factory.mktemp("keys")
    allowed = root / "authorized"
    generate_keys(root / "runner", "runner")
    for name in ("planner", "stack"):
        generate_keys(root / name, name)
        (allowed / f"{name}.key").parent.mkdir(exist_ok=True)
        (allowed / f"{name}.key").write_bytes((root / name / f"{name}.key").read_bytes())
    generate_keys(root / "intruder", "intruder")
    return {"root": root, "authorized": allowed,
            "server_secret": root / "runner" / "runner.key_secret",
            "server_public": root / "runner" / "runner.key"}


def client(keys: dict[str, Path], name: str) -> ClientKeys:
    return ClientKeys.from_files(keys["root"] / name / f"{name}.key_secret",
                                 keys["server_public"])


def use_env_keys(monkeypatch: pytest.MonkeyPatch, keys: dict[str, Path], name: str) -> None:
    """How `lstm-stream control` (and the test's readiness poll) find their keys."""
    monkeypatch.setenv(ENV_CLIENT_KEY, str(keys["root"] / name / f"{name}.key_secret"))
    monkeypatch.setenv(ENV_SERVER_KEY, str(keys["server_public"]))


def plain_request(ctx: zmq.Context[Any], endpoint: str, request: dict[str, Any]) -> bool:
    """Send a request without CURVE; whether any reply came within half a second."""
    with ctx.socket(zmq.REQ) as req:
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        req.send(msgpack.packb(request))
        return bool(req.poll(500))


def curve_opts(keys: dict[str, Path], *extra: str) -> tuple[str, ...]:
    return ("--set", f'security.server_key="{keys["server_secret"]}"',
            "--set", f'security.authorized_keys="{keys["authorized"]}"', *extra)


def test_keys_generate_command_writes_a_private_pair(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "car7"]) == 0
    out = capsys.readouterr().out
    public, secret = tmp_path / "k" / "car7.key", tmp_path / "k" / "car7.key_secret"
    assert str(public) in out and str(secret) in out
    assert secret.stat().st_mode & 0o077 == 0 and public.stat().st_mode & 0o004
    pub_key, sec_key = zmq.auth.load_certificate(secret)
    assert sec_key is not None and len(pub_key) == len(sec_key) == 40  # Z85 of 32 bytes
    assert pub_key.decode() in out and sec_key.decode() not in out
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "car7"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_control_answers_allowed_keys_only_and_denied_clients_cannot_reset(
        ctx: zmq.Context[Any], keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    use_env_keys(monkeypatch, keys, "planner")
    planner, intruder = client(keys, "planner"), client(keys, "intruder")
    x = np.ones(16, np.float32)
    with VehicleStack(ctx) as stack, serve_process(MODEL, stack.sensors_endpoint,
                                                   *curve_opts(keys)) as served:
        stack.wait_subscribed()
        stack.curve = planner  # connect_outputs polls status on the secured control socket
        stack.connect_outputs(served.output, served.control)
        for seq in range(3):
            stack.send(encode_sensor(seq, x, stream="a"))
        stack.receive(3)
        status = control_request(served.control, {"cmd": "status"}, curve=planner)
        assert status["ok"] and status["curve"] is True
        for request in ({"cmd": "reset"}, {"cmd": "reset", "stream": "a"},
                        {"cmd": "streams"}):
            with pytest.raises(ControlError, match="No reply"):  # a key not allowed
                control_request(served.control, request, curve=intruder, timeout_s=0.5,
                                context=ctx)
            assert not plain_request(ctx, served.control, request)  # no CURVE at all
        # nothing was reset, nothing was read: the state goes on
        streams = control_request(served.control, {"cmd": "streams"}, curve=planner)
        assert [(s["stream"], s["step"]) for s in streams["streams"]] == [("a", 3)]
        stack.send(encode_sensor(3, x, stream="a"))
        (_, out), = stack.receive(1)
        assert out["reset"] is None and out["step"] == 4
        st = control_request(served.control, {"cmd": "status"}, curve=planner)
        # only the allowed client's requests arrived: this status and the streams above
        assert st["control_requests"] == status["control_requests"] + 2
        assert control_request(served.control, {"cmd": "reset", "stream": "a"},
                               curve=planner) == {"ok": True, "reset": 1}


def test_secure_data_sockets_refuse_unknown_publishers_and_eavesdroppers(
        ctx: zmq.Context[Any], keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    use_env_keys(monkeypatch, keys, "stack")
    stack_keys = client(keys, "stack")
    x = np.zeros(16, np.float32)
    with VehicleStack(ctx, curve=stack_keys) as stack, serve_process(
            MODEL, stack.sensors_endpoint,
            *curve_opts(keys, "--set", "security.secure_data=true")) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        eavesdropper = ctx.socket(zmq.SUB)
        eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
        eavesdropper.connect(served.output)
        for seq in range(5):
            stack.send(encode_sensor(seq, x, stream="secret"))
        assert len(stack.receive(5)) == 5
        assert not eavesdropper.poll(500)  # no handshake, no data
        eavesdropper.close(linger=0)
        # a publisher whose key is not allowed is never subscribed to
        with VehicleStack(ctx, curve=client(keys, "intruder")) as rogue:
            status = control_request(served.control, {"cmd": "status"}, curve=stack_keys)
            assert status["received"] == 5
            with pytest.raises(ControlError, match="No runner subscribed"):
                rogue.wait_subscribed(timeout_s=1.0)


def test_bad_key_configuration_refuses_to_start(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="not a directory"):
        load_server_keys(keys["server_secret"], tmp_path / "none")
    with pytest.raises(SecurityError, match="holds no secret key"):
        load_server_keys(keys["server_public"], keys["authorized"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SecurityError, match="no client could connect"):
        load_server_keys(keys["server_secret"], tmp_path / "empty")
    with pytest.raises(ConfigError, match="both or neither"):
        load_runner_config(None, [f'security.server_key="{keys["server_secret"]}"'])
    with pytest.raises(ConfigError, match="secure_data"):
        load_runner_config(None, ["security.secure_data=true"])


@pytest.mark.parametrize(("endpoint", "loopback"), [
    ("tcp://127.0.0.1:5557", True), ("tcp://127.0.0.2:1", True), ("tcp://[::1]:5557", True),
    ("tcp://localhost:5557", True), ("ipc:///tmp/ctl", True), ("inproc://ctl", True),
    ("tcp://*:5557", False), ("tcp://0.0.0.0:5557", False), ("tcp://10.0.0.5:5557", False),
    ("tcp://eth0:5557", False), ("tcp://127.0.0.1:0;10.0.0.5:5557", False),
])
def test_loopback_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


def test_remote_control_needs_keys_or_an_explicit_risk(keys: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"'control.endpoint' must be on loopback.*"
                                          r"allow_insecure_remote.*got 'tcp://\*:5557'"):
        load_runner_config(None, ['control.endpoint="tcp://*:5557"'])
    assert load_runner_config(None, ['control.endpoint="tcp://*:5557"',
                                     "control.allow_insecure_remote=true"])
    assert load_runner_config(None, ['control.endpoint="tcp://*:5557"',
                                     f'security.server_key="{keys["server_secret"]}"',
                                     f'security.authorized_keys="{keys["authorized"]}"'])
    done = subprocess.run([sys.executable, "-m", "lstm_stream", "serve", str(MODEL),
                           "--control", "tcp://0.0.0.0:5557"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "must be on loopback" in done.stderr


def test_pinned_model_hash_mismatch_refuses_to_start(ctx: zmq.Context[Any]) -> None:
    actual = load_contract(MODEL).sha256
    wrong = "0" * 64
    done = subprocess.run([sys.executable, "-m", "lstm_stream", "serve", str(MODEL),
                           "--input", free_endpoint(), "--output", free_endpoint(),
                           "--control", free_endpoint(), "--set", f'model.sha256="{wrong}"'],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert actual in done.stderr and wrong in done.stderr and "Refusing" in done.stderr
    assert "ready:" not in done.stderr  # nothing was served
    with VehicleStack(ctx) as stack, serve_process(
            MODEL, stack.sensors_endpoint, "--set", f'model.sha256="{actual}"') as served:
        assert control_request(served.control, {"cmd": "status"})["model"]["sha256"] == actual
    with pytest.raises(ConfigError, match=r"'model.sha256' must be 64 lowercase hex"):
        load_runner_config(None, ['model.sha256="ABC"'])


def test_nothing_loads_pickle_or_unpickles_socket_data() -> None:
    """Loading never executes code from a file: no pickle, no recv_pyobj, weights only."""
    forbidden = re.compile(r"import pickle|pickle\.load|recv_pyobj|allow_pickle=True"
                           r"|import dill|import joblib|cloudpickle")
    offenders = []
    for path in (REPO / "src" / "lstm_stream").rglob("*.py"):
        text = path.read_text()
        offenders += [f"{path.name}: {m.group(0)}" for m in forbidden.finditer(text)]
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.name}: {call.group(0)}")
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in call.group(1):
                offenders.append(f"{path.name}: {call.group(0)}")
    assert offenders == []


def test_control_command_takes_key_files(keys: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import subprocess
    import sys

    use_env_keys(monkeypatch, keys, "planner")  # for the readiness check of serve_process
    secret = keys["root"] / "planner" / "planner.key_secret"
    with VehicleStack() as stack, serve_process(MODEL, stack.sensors_endpoint,
                                                *curve_opts(keys)) as served:
        def control(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "lstm_stream", "control", "status",
                                   "--control", served.control, "--timeout", "0.5", *extra],
                                  capture_output=True, text=True, timeout=60,
                                  env={k: v for k, v in __import__("os").environ.items()
                                       if not k.startswith("LSTM_STREAM_")})

        allowed = control("--client-key", str(secret), "--server-key",
                          str(keys["server_public"]))
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["curve"] is True
        denied = control()  # no keys: the runner does not answer
        assert denied.returncode == 1 and "No reply" in denied.stderr
        half = control("--client-key", str(secret))
        assert half.returncode == 2 and "both --client-key and --server-key" in half.stderr
