"""Bring your own policy: torch models exported as users export them, served by real
`lstm-stream serve` processes, compared with the torch module stepped with carried state.

Exports use both torch exporters (tools/export_policy.py, the calls
docs/model-contract.md shows): the legacy one (``dynamo=False`` with
``dynamic_axes``) and the default dynamo one (weights in an external
``.onnx.data`` file, a batch-2 sample with ``dynamic_shapes``), with the names a
user gives (``obs``, ``h0``, ``c0`` -> ``action``, ``value``, ``hn``, ``cn``) and
batch-first ``[batch, 1, features]`` observations.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.errors import ModelContractError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.serve.client import control_request

from helpers import tools
from helpers.support import REPO, VehicleStack, serve_process

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter's own dependency
policies = tools.policies()  # tools/policies.py, needs torch
export_dynamo = tools.export_policy().export_dynamo
export_legacy = tools.export_policy().export_legacy

pytestmark = pytest.mark.torch
POLICIES = str(REPO / "tools" / "policies.py")


def torch_steps(module: Any, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The module stepped one observation at a time per stream, (h, c) carried:
    actions and values, each (streams, steps, n)."""
    dtype = next(module.parameters()).dtype
    actions, values = [], []
    with torch.inference_mode():
        for stream in xs:
            state = [torch.zeros(policies.LAYERS, 1, policies.HIDDEN, dtype=dtype)
                     for _ in range(2 if isinstance(module, policies.LstmPolicy) else 1)]
            a_row, v_row = [], []
            for x in stream:
                action, value, *state = module(torch.from_numpy(x).to(dtype)[None, None], *state)
                a_row.append(action[0].float().numpy())
                v_row.append(value[0].float().numpy())
            actions.append(a_row)
            values.append(v_row)
    return np.asarray(actions), np.asarray(values)


def serve_streams(model: Path, xs: np.ndarray, *flags: str
                  ) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[str, Any]]:
    """Send every stream's steps interleaved through a real `serve`; outputs by
    (stream, seq), and the final status."""
    with VehicleStack(zmq.Context.instance()) as stack, serve_process(
            model, stack.sensors_endpoint, *flags) as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        for seq in range(xs.shape[1]):
            for i in range(xs.shape[0]):
                stack.send(encode_sensor(seq, xs[i, seq], stream=f"car{i}"))
        got = stack.receive(xs.shape[0] * xs.shape[1])
        status = control_request(served.control, {"cmd": "status"})
    assert {t for t, _ in got} == {"policy"}, [o for t, o in got if t != "policy"][:2]
    return {(int(o["stream"][3:]), o["seq"]): o for _, o in got}, status


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("exports")
    return {
        "legacy": export_legacy(policies.lstm_policy(), tmp / "legacy.onnx"),
        "dynamo": export_dynamo(policies.lstm_policy(), tmp / "dynamo.onnx"),
        "gru": export_legacy(policies.gru_policy(), tmp / "gru.onnx"),
        "float16": export_legacy(policies.lstm_policy_half(), tmp / "half.onnx"),
        "batch1": export_legacy(policies.lstm_policy(), tmp / "batch1.onnx", dynamic=False),
        "batch8": export_legacy(policies.lstm_policy(), tmp / "batch8.onnx", dynamic=False,
                                batch=8),
    }


@pytest.fixture(scope="module")
def xs() -> np.ndarray:
    return np.random.default_rng(21).normal(size=(3, 12, policies.FEATURES)).astype(np.float32)


@pytest.mark.parametrize(("export", "flags"), [
    ("legacy", ("--io", "x=obs,y=action", "--state", "h0=hn", "--state", "c0=cn")),
    ("dynamo", ("--io", "y=action")),  # the states and x by torch's names: only y is declared
    # the dynamo exporter slices and concatenates the LSTM's weights into ONNX's gate
    # order with nodes: the graph backends fold them into constants at load time
    ("dynamo", ("--io", "y=action", "--backend", "numpy")),
    ("dynamo", ("--io", "y=action", "--backend", "torch")),
])
def test_an_exported_lstm_policy_serves_as_the_module_steps(
        exports: dict[str, Path], xs: np.ndarray, export: str, flags: tuple[str, ...]) -> None:
    if export == "dynamo":
        assert Path(f"{exports['dynamo']}.data").is_file()  # weights outside the .onnx
    want_action, want_value = torch_steps(policies.lstm_policy(), xs)
    got, status = serve_streams(exports[export], xs, *flags)
    for (i, seq), out in got.items():
        np.testing.assert_allclose(out["y"], want_action[i, seq], atol=1e-5)
        np.testing.assert_allclose(out["extra"]["value"], want_value[i, seq], atol=1e-5)
        assert out["step"] == seq + 1
    assert status["model"]["extras"] == ["value"] and status["stepped"] == xs.size // xs.shape[2]


def test_a_gru_policy_serves_with_its_names_inferred(exports: dict[str, Path],
                                                     xs: np.ndarray) -> None:
    want_action, want_value = torch_steps(policies.gru_policy(), xs)
    got, _ = serve_streams(exports["gru"], xs, "--io", "y=action")
    for (i, seq), out in got.items():
        np.testing.assert_allclose(out["y"], want_action[i, seq], atol=1e-5)
        np.testing.assert_allclose(out["extra"]["value"], want_value[i, seq], atol=1e-5)


def test_a_float16_policy_serves_to_its_precision(exports: dict[str, Path],
                                                  xs: np.ndarray) -> None:
    assert load_contract(exports["float16"], _io()).dtype == "float16"
    want_action, _ = torch_steps(policies.lstm_policy(), xs)  # the float32 module
    got, _ = serve_streams(exports["float16"], xs, "--io", "y=action")
    for (i, seq), out in got.items():
        np.testing.assert_allclose(out["y"], want_action[i, seq], atol=1e-2)


def test_a_fixed_batch_of_one_is_served_one_message_per_call(exports: dict[str, Path],
                                                             xs: np.ndarray) -> None:
    want_action, _ = torch_steps(policies.lstm_policy(), xs)
    got, status = serve_streams(exports["batch1"], xs, "--io", "y=action")
    for (i, seq), out in got.items():
        np.testing.assert_allclose(out["y"], want_action[i, seq], atol=1e-5)
    assert status["model"]["fixed_batch"] == 1
    assert status["batches"] == status["stepped"]  # never batched, never a failed call
    assert status["rejected"] == {}


def test_a_fixed_batch_of_eight_is_refused_with_the_export_call(
        exports: dict[str, Path]) -> None:
    with pytest.raises(ModelContractError, match=r"fixed batch \(obs batch 8(.|\n)*"
                       r"dynamic_axes=\{\"obs\": \{0: \"batch\"\}, \"h0\": \{1: \"batch\"\}"):
        load_contract(exports["batch8"], _io())


def test_ambiguous_outputs_are_refused_with_the_flags_to_pass(exports: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, "-m", "lstm_stream", "info", str(exports["legacy"])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot tell which output is the policy output y: 'action', 'value'" in done.stderr
    assert "Declare the names, e.g. --io y=action" in done.stderr
    info = subprocess.run([sys.executable, "-m", "lstm_stream", "info",
                           str(exports["dynamo"]), "--io", "y=action"],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    for line in ("input      obs [batch, 1, 10] as x", "output     action [batch, 3] as y",
                 "extra      value [batch, 1]", "state      h0 -> hn [layers=2, batch, hidden=48]",
                 "mapping    state h0 -> hn: torch's names h0 -> hn, c0 -> cn",
                 "dynamo.onnx.data"):
        assert line in info.stdout, line


def _io() -> Any:
    from lstm_stream.core.model.names import ModelIO

    return ModelIO(y="action")


@pytest.mark.parametrize("export", ["legacy", "dynamo", "float16", "batch1"])
def test_check_passes_on_the_exports(exports: dict[str, Path], export: str) -> None:
    factory = "lstm_policy_half" if export == "float16" else "lstm_policy"
    done = _check(exports[export], "--io", "y=action", "--torch", f"{POLICIES}:{factory}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch    action (y)" in done.stdout and "session  value" in done.stdout
    assert "check: OK" in done.stdout


def test_check_fails_on_a_perturbed_step_graph(exports: dict[str, Path],
                                               tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exports["legacy"]))
    weights = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 3)
    array = numpy_helper.to_array(weights).copy()
    array.flat[0] += 0.05  # one weight of the recurrence, off by a little
    weights.CopyFrom(numpy_helper.from_array(array, weights.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    done = _check(perturbed, "--io", "y=action", "--torch", f"{POLICIES}:lstm_policy")
    assert done.returncode == 1
    assert "DIFFERS" in done.stdout and "check: FAILED" in done.stdout
    assert "session  action (y)" in done.stdout  # the runner still serves the file exactly


def _check(model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lstm_stream", "check", str(model), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_float64_policy_is_refused_by_onnxruntime_by_name_and_served_by_numpy(
        tmp_path: Path, xs: np.ndarray) -> None:
    from lstm_stream.serve.client import ControlError

    path = export_legacy(policies.lstm_policy().double(), tmp_path / "double.onnx")
    assert load_contract(path, _io()).dtype == "float64"
    with pytest.raises(ControlError, match=r"cannot run it(.|\n)*not float64: export in "
                       r"float32, or serve it with --backend numpy"), serve_process(
            path, "tcp://127.0.0.1:1", "--io", "y=action"):
        pass
    want_action, _ = torch_steps(policies.lstm_policy().double(), xs)
    got, _ = serve_streams(path, xs, "--io", "y=action", "--backend", "numpy")
    for (i, seq), out in got.items():
        np.testing.assert_allclose(out["y"], want_action[i, seq], atol=1e-5)
