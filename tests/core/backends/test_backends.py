"""The onnxruntime, numpy and torch backends agree step after step, with state fed back."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lstm_stream.core.backends import StepBackend, create_backend
from lstm_stream.core.errors import BackendError, UnsupportedOperatorError
from lstm_stream.core.model import cell
from lstm_stream.core.model.contract import ModelContract, load_contract

from helpers.support import REPO, run_python
from helpers.tools import build_step_model

TOL = 1e-5
HAS_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = [
    "onnxruntime",
    "numpy",
    pytest.param("torch", marks=[pytest.mark.torch,
                                 pytest.mark.skipif(not HAS_TORCH, reason="needs torch")]),
]  # fmt: skip
INTERPRETERS = [b for b in BACKENDS if b != "onnxruntime"]


def run_steps(
    backend: StepBackend, contract: ModelContract, xs: np.ndarray
) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """Step through xs (T, B, F), feeding each step's state into the next."""
    batch = xs.shape[1]
    states: Sequence[np.ndarray] = [
        np.zeros((s.layers, batch, s.hidden), np.float32) for s in contract.states
    ]
    out = []
    for x in xs:
        y, states = backend.step(x, states)
        assert y.dtype == np.float32 and all(s.dtype == np.float32 for s in states)
        out.append((y, states))
    return out


def assert_same_run(got: list[Any], want: list[Any]) -> None:
    for t, ((y, states), (y_ref, states_ref)) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(y, y_ref, rtol=TOL, atol=TOL, err_msg=f"y at step {t}")
        for s, s_ref in zip(states, states_ref, strict=True):
            np.testing.assert_allclose(s, s_ref, rtol=TOL, atol=TOL, err_msg=f"state at {t}")


def inputs(contract: ModelContract, batch: int, steps: int = 50, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 2.0, size=(steps, batch, contract.n_features)).astype(np.float32)


MODELS = {
    "lstm-1": {"cell": "lstm", "layers": 1},
    "lstm-2": {"cell": "lstm", "layers": 2},
    "lstm-2-raw": {"cell": "lstm", "layers": 2, "normalize": False},
    "gru-2": {"cell": "gru", "layers": 2},
    "gru-1-raw": {"cell": "gru", "layers": 1, "normalize": False},
}


@pytest.mark.parametrize("backend", INTERPRETERS)
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("model", list(MODELS))
def test_interpreters_match_onnxruntime_over_50_steps(
    model_factory: Any, model: str, batch: int, backend: str
) -> None:
    path = model_factory(**MODELS[model], hidden=24, features=6, outputs=2, seed=7)
    contract = load_contract(path)
    xs = inputs(contract, batch)
    want = run_steps(create_backend("onnxruntime", contract), contract, xs)
    got = run_steps(create_backend(backend, contract), contract, xs)
    assert_same_run(got, want)
    assert np.ptp(np.stack([y for y, _ in want])) > 0.02  # outputs really vary


def _weights_through_nodes(path: Path) -> int:
    """Rewrite the model so that every LSTM's W and R come out of nodes, as the dynamo
    exporter writes them: W as the Concat of its two halves (Slices along the gate
    axis), R through a Transpose of a transposed copy. Returns the nodes added."""
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    added = []
    for node in [n for n in model.graph.node if n.op_type == "LSTM"]:
        w, r = node.input[1], node.input[2]
        rows = numpy_helper.to_array(inits[w]).shape[1]
        inits[w].name, inits[r].name = f"{w}_raw", f"{r}_t"
        inits[r].CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(inits[r]).transpose(0, 2, 1).copy(), f"{r}_t"))
        half = rows // 2
        model.graph.initializer.extend([_const(f"{w}_a", [0]), _const(f"{w}_b", [half]),
                                        _const(f"{w}_c", [rows]), _const(f"{w}_axis", [1])])
        added += [
            helper.make_node("Slice", [f"{w}_raw", f"{w}_a", f"{w}_b", f"{w}_axis"],
                             [f"{w}_lo"], name=f"{w}_slice_lo"),
            helper.make_node("Slice", [f"{w}_raw", f"{w}_b", f"{w}_c", f"{w}_axis"],
                             [f"{w}_hi"], name=f"{w}_slice_hi"),
            helper.make_node("Concat", [f"{w}_lo", f"{w}_hi"], [w], axis=1, name=f"{w}_cat"),
            helper.make_node("Transpose", [f"{r}_t"], [r], perm=[0, 2, 1], name=f"{r}_tr"),
        ]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(added + nodes)
    onnx.save(model, path)
    return len(added)


@pytest.mark.parametrize("backend", INTERPRETERS)
def test_weights_computed_by_nodes_are_folded_at_load_time(
        model_factory: Any, backend: str) -> None:
    path = model_factory(cell="lstm", layers=2, hidden=24, features=6, outputs=2, seed=7)
    before = len(onnx.load(path).graph.node)
    assert _weights_through_nodes(path) == 8
    contract = load_contract(path)
    interpreter = create_backend(backend, contract)
    assert len(interpreter.program.kernels) == before  # type: ignore[attr-defined]
    xs = inputs(contract, 5)
    assert_same_run(run_steps(interpreter, contract, xs),
                    run_steps(create_backend("onnxruntime", contract), contract, xs))


@pytest.mark.parametrize("backend", INTERPRETERS)
def test_shipped_default_model(backend: str) -> None:
    contract = load_contract(REPO / "models/random_lstm.onnx")
    assert (contract.n_features, contract.n_outputs, contract.cell) == (16, 2, "lstm")
    xs = inputs(contract, batch=3, steps=20)
    want = run_steps(create_backend("onnxruntime", contract), contract, xs)
    assert_same_run(run_steps(create_backend(backend, contract), contract, xs), want)


@pytest.mark.parametrize("backend", INTERPRETERS)
def test_gru_with_onnx_default_linear_before_reset(tmp_path: Path, backend: str) -> None:
    model = build_step_model(cell="gru", layers=2, hidden=16, features=5, seed=2)
    for node in model.graph.node:
        if node.op_type == "GRU":
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("hidden_size", 16))
    path = tmp_path / "gru_lbr0.onnx"
    path.write_bytes(model.SerializeToString())
    contract = load_contract(path)
    xs = inputs(contract, batch=4, steps=20)
    want = run_steps(create_backend("onnxruntime", contract), contract, xs)
    assert_same_run(run_steps(create_backend(backend, contract), contract, xs), want)


def test_numpy_backend_equals_cell_maths_from_the_builders_weights(tmp_path: Path) -> None:
    model = build_step_model(cell="lstm", layers=2, hidden=12, features=4, outputs=3, seed=5)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = [cell.lstm_from_onnx(weights[f"W_{k}"], weights[f"R_{k}"], weights[f"B_{k}"])
              for k in range(2)]  # fmt: skip
    norm = json.loads({p.key: p.value for p in model.metadata_props}["normalization"])
    mean, std = np.float32(norm["mean"]), np.float32(norm["std"])

    contract = load_contract(path)
    backend = create_backend("numpy", contract)
    xs = inputs(contract, batch=3, steps=30)
    h = np.zeros((2, 3, 12), np.float32)
    c = np.zeros_like(h)
    for (y, (h_got, c_got)), x in zip(run_steps(backend, contract, xs), xs, strict=True):
        top, h, c = cell.lstm_step((x - mean) / std, h, c, layers)
        y_want = top @ weights["head_W"].T + weights["head_b"]
        np.testing.assert_allclose(y, y_want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(h_got, h, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(c_got, c, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------ the rest of the operator subset
def _vi(name: str, shape: list[Any], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name: str, value: Any, dtype: Any = np.int64) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _operator_zoo_opset17() -> onnx.ModelProto:
    """Every non-recurrent operator the interpreters implement, in a contract-shaped model."""
    rng = np.random.default_rng(4)
    f32 = np.float32
    n = helper.make_node
    nodes = [
        n("Constant", [], ["k"], value=_const("kv", rng.normal(size=(6, 6)), f32)),
        n("MatMul", ["x", "k"], ["a"]),
        n("Relu", ["a"], ["a_relu"]),
        n("Tanh", ["a_relu"], ["a_tanh"]),
        n("Gemm", ["a_tanh", "gw", "gb"], ["g"], alpha=0.5, beta=2.0, transB=1),
        n("Gemm", ["gw_t", "a_tanh"], ["g_t"], transA=1, transB=1),  # (4, B)
        n("Transpose", ["g_t"], ["g_tt"], perm=[1, 0]),  # (B, 4)
        n("Sigmoid", ["g"], ["s"]),
        n("Softmax", ["s"], ["sm"], axis=1),
        n("Split", ["sm", "split"], ["p1", "p2"], axis=1),  # (B, 1), (B, 3)
        n("Shape", ["x"], ["shape"]),
        n("Gather", ["shape", "zero"], ["batch"]),  # a scalar: the batch size
        n("Unsqueeze", ["batch", "zero1"], ["batch1"]),
        n("Concat", ["batch1", "minus1"], ["target"], axis=0),
        n("Reshape", ["p2", "target"], ["p2r"]),
        n("Transpose", ["p2r"], ["p2t"]),
        n("Transpose", ["p2t"], ["p2b"]),
        n("Slice", ["p2b", "neg1", "neg_big", "one1", "neg1"], ["rev"]),  # reversed columns
        n("Gather", ["x", "cols"], ["picked"], axis=1),
        n("Mul", ["x", "ten"], ["x10"]),
        n("Cast", ["x10"], ["xi"], to=TensorProto.INT64),
        n("Div", ["xi", "three"], ["xq"]),  # integer division truncates toward zero
        n("Cast", ["xq"], ["xqf"], to=TensorProto.FLOAT),
        n("Slice", ["xqf", "zero1", "one1", "one1"], ["q1"]),
        n("Div", ["q1", "ten"], ["q1s"]),
        n("Squeeze", ["h", "zero1"], ["h2"]),
        n("Sub", ["h2", "g_tt"], ["hd"]),
        n("Concat", ["p1", "rev", "picked", "q1s", "hd"], ["cat"], axis=1),
        n("Identity", ["cat"], ["y"]),
        n("Add", ["h2", "g_tt"], ["hs"]),
        n("Tanh", ["hs"], ["ht"]),
        n("Unsqueeze", ["ht", "zero1"], ["h_out"]),
    ]
    inits = [
        _const("gw", rng.normal(size=(4, 6)), f32), _const("gb", rng.normal(size=4), f32),
        _const("gw_t", rng.normal(size=(6, 4)), f32),
        _const("split", [1, 3]), _const("zero", 0), _const("zero1", [0]),
        _const("minus1", [-1]), _const("neg1", [-1]), _const("neg_big", [-(2**62)]),
        _const("one1", [1]), _const("cols", [2, 0]), _const("ten", 10.0, f32),
        _const("three", 3),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "zoo", [_vi("x", ["batch", 6]), _vi("h", [1, "batch", 4])],
        [_vi("y", ["batch", 11]), _vi("h_out", [1, "batch", 4])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _operator_zoo_opset9() -> onnx.ModelProto:
    """The opset-9 forms: Slice, axes and split as attributes, Softmax over a coerced 2-D view."""
    n = helper.make_node
    nodes = [
        n("Unsqueeze", ["x"], ["x3"], axes=[1]),  # (B, 1, 6)
        n("Softmax", ["x3"], ["sm"], axis=1),  # over the flattened (1, 6) tail
        n("Squeeze", ["sm"], ["sm2"], axes=[1]),
        n("Split", ["sm2"], ["a", "b"], axis=1, split=[2, 4]),
        n("Slice", ["b"], ["b2"], starts=[1], ends=[100], axes=[1]),
        n("Split", ["h"], ["h_a", "h_b"], axis=2),  # equal halves
        n("Concat", ["h_b", "h_a"], ["h_out"], axis=2),
        n("Concat", ["a", "b2"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "zoo9", [_vi("x", ["batch", 6]), _vi("h", [1, "batch", 4])],
        [_vi("y", ["batch", 5]), _vi("h_out", [1, "batch", 4])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)


@pytest.mark.parametrize("backend", INTERPRETERS)
@pytest.mark.parametrize("build", [_operator_zoo_opset17, _operator_zoo_opset9])
def test_operator_subset_matches_onnxruntime(tmp_path: Path, build: Any, backend: str) -> None:
    model = build()
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "zoo.onnx"
    path.write_bytes(model.SerializeToString())
    contract = load_contract(path)
    xs = inputs(contract, batch=5, steps=5)
    want = run_steps(create_backend("onnxruntime", contract), contract, xs)
    assert_same_run(run_steps(create_backend(backend, contract), contract, xs), want)


# ------------------------------------------------------------------------- refusals
def _write(tmp_path: Path, model: onnx.ModelProto) -> ModelContract:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return load_contract(path)


@pytest.mark.parametrize("backend", INTERPRETERS)
def test_unknown_operator_is_refused_at_creation(tmp_path: Path, backend: str) -> None:
    nodes = [helper.make_node("Elu", ["x"], ["y"], name="the_elu"),
             helper.make_node("Identity", ["h"], ["h_out"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [_vi("x", ["batch", 3]), _vi("h", [1, "batch", 2])],
                              [_vi("y", ["batch", 3]), _vi("h_out", [1, "batch", 2])])  # fmt: skip
    contract = _write(tmp_path, helper.make_model(graph))
    with pytest.raises(UnsupportedOperatorError, match=r"operator 'Elu' \(node 'the_elu'\)"):
        create_backend(backend, contract)
    create_backend("onnxruntime", contract)  # the model itself is fine


@pytest.mark.parametrize("backend", INTERPRETERS)
def test_a_cast_to_an_unsupported_type_is_refused_by_its_name(tmp_path: Path,
                                                              backend: str) -> None:
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.BFLOAT16, name="to_bf16"),
             helper.make_node("Cast", ["x16"], ["y"], to=TensorProto.FLOAT, name="back"),
             helper.make_node("Identity", ["h"], ["h_out"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [_vi("x", ["batch", 3]), _vi("h", [1, "batch", 2])],
                              [_vi("y", ["batch", 3]), _vi("h_out", [1, "batch", 2])])  # fmt: skip
    with pytest.raises(UnsupportedOperatorError, match=r"Cast node 'to_bf16': attribute 'to' "
                       r"is element type 16 \(bfloat16; only float and integer types\)"):
        create_backend(backend, _write(tmp_path, helper.make_model(graph)))


@pytest.mark.parametrize("backend", INTERPRETERS)
@pytest.mark.parametrize(
    ("attribute", "value"),
    [("direction", "reverse"), ("clip", 3.0), ("activations", ["Sigmoid", "Relu", "Tanh"])],
)
def test_unsupported_lstm_attributes_are_refused(
    tmp_path: Path, backend: str, attribute: str, value: Any
) -> None:
    model = build_step_model(layers=1, hidden=4, features=3)
    lstm = next(node for node in model.graph.node if node.op_type == "LSTM")
    lstm.attribute.append(helper.make_attribute(attribute, value))
    contract = _write(tmp_path, model)
    with pytest.raises(UnsupportedOperatorError, match=rf"LSTM node '{lstm.name}'.*{attribute}"):
        create_backend(backend, contract)


def test_unknown_backend_name_is_refused(model_factory: Any) -> None:
    contract = load_contract(model_factory(layers=1, hidden=4, features=3))
    with pytest.raises(BackendError, match="Unknown backend 'nope'; choose one of"):
        create_backend("nope", contract)


def test_runtime_backends_do_not_import_torch(model_factory: Any) -> None:
    path = model_factory(layers=1, hidden=4, features=3)
    code = (
        "import sys, numpy as np\n"
        "import lstm_stream.core.backends.numpy, lstm_stream.core.backends.onnxruntime\n"
        "import lstm_stream.core.model.contract\n"
        "from lstm_stream.core.backends import create_backend\n"
        f"c = lstm_stream.core.model.contract.load_contract({str(path)!r})\n"
        "b = create_backend('numpy', c)\n"
        "b.step(np.zeros((1, 3), np.float32), [np.zeros((1, 1, 4), np.float32)] * 2)\n"
        "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported by the runtime: {done.stdout}"


def test_onnxruntime_fast_path_equals_the_public_run() -> None:
    """The backend's direct call into the C++ session gives what `InferenceSession.run` gives."""
    from lstm_stream.core.backends.onnxruntime import OnnxRuntimeBackend

    repo = REPO
    contract = load_contract(repo / "models" / "random_lstm.onnx")
    backend = OnnxRuntimeBackend(contract)
    rng = np.random.default_rng(3)
    states = tuple(np.zeros((s.layers, 2, s.hidden), np.float32) for s in contract.states)
    public_states = states
    names = ["y", *(s.output for s in contract.states)]
    for _ in range(20):
        x = rng.normal(size=(2, contract.n_features)).astype(np.float32)
        y, states = backend.step(x, states)
        feeds = {"x": x, **{s.input: v for s, v in zip(contract.states, public_states,
                                                           strict=True)}}
        public = backend.session.run(names, feeds)
        public_states = tuple(public[1:])
        np.testing.assert_array_equal(y, public[0])
        for a, b in zip(states, public_states, strict=True):
            np.testing.assert_array_equal(a, b)


def test_backends_run_the_bytes_that_were_hashed(model_factory: Any) -> None:
    """Replacing the model file after the contract was read (and its hash checked)
    changes nothing: every backend runs the bytes that were hashed."""
    from lstm_stream.core.backends import create_backend

    path = model_factory(name="pinned.onnx", seed=1)
    contract = load_contract(path)
    expected = create_backend("onnxruntime", load_contract(path))
    path.write_bytes(model_factory(name="other.onnx", seed=2).read_bytes())
    x = np.ones((1, contract.n_features), np.float32)
    zeros = tuple(np.zeros((s.layers, 1, s.hidden), np.float32) for s in contract.states)
    want, _ = expected.step(x, zeros)
    for name in ("onnxruntime", "numpy"):
        got, _ = create_backend(name, contract).step(x, zeros)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
    assert not np.allclose(create_backend("onnxruntime", load_contract(path)).step(x, zeros)[0],
                           want, atol=1e-5)  # the new file really is another model


@pytest.mark.parametrize("model", list(MODELS))
def test_onnxruntime_bound_batch1_equals_run_bit_for_bit(model_factory: Any, model: str
                                                         ) -> None:
    """step_one (IOBinding over reused buffers) gives exactly what step gives, and the
    y it returns is the caller's: not overwritten by the next step."""
    path = model_factory(**MODELS[model], hidden=16, features=8, outputs=3, seed=4)
    contract = load_contract(path)
    backend = create_backend("onnxruntime", contract)
    assert getattr(backend, "_bound", None) is not None  # the fast path is in use
    xs = inputs(contract, batch=1, steps=20)
    want = run_steps(backend, contract, xs)
    states: Sequence[np.ndarray] = [np.zeros((s.layers, 1, s.hidden), np.float32)
                                    for s in contract.states]
    ys = []
    for t, x in enumerate(xs):
        y, new = backend.step_one(x, states)
        ys.append(y)
        np.testing.assert_array_equal(y, want[t][0])
        for s, s_want in zip(new, want[t][1], strict=True):
            np.testing.assert_array_equal(s, s_want)
        states = [np.array(s) for s in new]  # the buffers are the backend's: copy, as commit does
    for t, y in enumerate(ys):
        np.testing.assert_array_equal(y, want[t][0])
