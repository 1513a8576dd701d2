"""The numpy reference cells against torch, the ONNX reference operators, and hand maths."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from lstm_stream.core.model.cell import (
    GruWeights,
    LstmWeights,
    gru_from_onnx,
    gru_from_torch,
    gru_sequence,
    gru_to_onnx,
    lstm_cell,
    lstm_from_keras,
    lstm_from_onnx,
    lstm_from_torch,
    lstm_sequence,
    lstm_step,
    lstm_to_onnx,
    sigmoid,
)

TOL = 1e-5
T, BATCH, INPUT, HIDDEN = 20, 4, 5, 7


def _rand(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return rng.uniform(-scale, scale, size=shape).astype(np.float32)


# ------------------------------------------------------------------ hand-computed


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_single_unit_lstm_matches_hand_computed_gates() -> None:
    # One input, one unit; every gate gets a different weight so a swapped gate
    # order or a missing forget gate changes the answer.
    wi, wf, wg, wo = 0.5, -0.3, 0.8, 1.2  # input weights, gate order i, f, g, o
    ui, uf, ug, uo = 0.1, 0.4, -0.6, 0.2  # recurrent weights
    bi, bf, bg, bo = 0.05, 1.0, -0.1, 0.3  # b_ih; b_hh is set to 0.01 for every gate
    bh = 0.01
    weights = LstmWeights(
        w_ih=np.array([[wi], [wf], [wg], [wo]]),
        w_hh=np.array([[ui], [uf], [ug], [uo]]),
        b_ih=np.array([bi, bf, bg, bo]),
        b_hh=np.full(4, bh),
    )
    x, h, c = 0.7, -0.2, 0.5
    i = _sig(wi * x + ui * h + bi + bh)
    f = _sig(wf * x + uf * h + bf + bh)
    g = math.tanh(wg * x + ug * h + bg + bh)
    o = _sig(wo * x + uo * h + bo + bh)
    c_expected = f * c + i * g
    h_expected = o * math.tanh(c_expected)

    h_new, c_new = lstm_cell(np.array([[x]]), np.array([[h]]), np.array([[c]]), weights)

    assert h_new.item() == pytest.approx(h_expected, abs=1e-12)
    assert c_new.item() == pytest.approx(c_expected, abs=1e-12)


def test_single_unit_gru_matches_hand_computed_gates() -> None:
    wr, wz, wn = 0.5, -0.3, 0.8  # gate order r, z, n
    ur, uz, un = 0.1, 0.4, -0.6
    br, bz, bn = 0.05, 0.2, -0.1
    hr, hz, hn = 0.01, -0.02, 0.3  # b_hh; b_hn is where the two conventions differ
    x, h = 0.7, -0.2
    r = _sig(wr * x + br + ur * h + hr)
    z = _sig(wz * x + bz + uz * h + hz)
    n_torch = math.tanh(wn * x + bn + r * (un * h + hn))
    n_onnx = math.tanh(wn * x + bn + un * (r * h) + hn)

    for linear_before_reset, n in ((True, n_torch), (False, n_onnx)):
        weights = GruWeights(
            w_ih=np.array([[wr], [wz], [wn]]),
            w_hh=np.array([[ur], [uz], [un]]),
            b_ih=np.array([br, bz, bn]),
            b_hh=np.array([hr, hz, hn]),
            linear_before_reset=linear_before_reset,
        )
        (h_new,), _ = gru_sequence(np.array([[[x]]]), np.array([[[h]]]), [weights])
        assert h_new.item() == pytest.approx((1 - z) * n + z * h, abs=1e-12)


def test_sigmoid_is_stable_for_large_inputs() -> None:
    z = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(z)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


def test_float32_input_stays_float32_with_float64_weights() -> None:
    rng = np.random.default_rng(0)
    weights = LstmWeights(
        w_ih=rng.normal(size=(4 * HIDDEN, INPUT)),
        w_hh=rng.normal(size=(4 * HIDDEN, HIDDEN)),
        b_ih=rng.normal(size=4 * HIDDEN),
        b_hh=rng.normal(size=4 * HIDDEN),
    )
    x = _rand(rng, BATCH, INPUT)
    state = np.zeros((1, BATCH, HIDDEN), dtype=np.float32)
    top, h, c = lstm_step(x, state, state, [weights])
    assert all(a.dtype == np.float32 for a in (top, h, c))


# ------------------------------------------------------------------------- torch


@pytest.mark.torch
@pytest.mark.parametrize("num_layers", [1, 3])
def test_lstm_sequence_matches_torch(num_layers: int) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.LSTM(INPUT, HIDDEN, num_layers=num_layers)
    rng = np.random.default_rng(1)
    xs = _rand(rng, T, BATCH, INPUT, scale=2.0)
    h0 = _rand(rng, num_layers, BATCH, HIDDEN)
    c0 = _rand(rng, num_layers, BATCH, HIDDEN)
    with torch.no_grad():
        y, (h_t, c_t) = module(torch.from_numpy(xs), (torch.from_numpy(h0), torch.from_numpy(c0)))
    state = {k: v.numpy() for k, v in module.state_dict().items()}

    ys, h_np, c_np = lstm_sequence(xs, h0, c0, lstm_from_torch(state, num_layers))

    np.testing.assert_allclose(ys, y.numpy(), atol=TOL)
    np.testing.assert_allclose(h_np, h_t.numpy(), atol=TOL)
    np.testing.assert_allclose(c_np, c_t.numpy(), atol=TOL)
    assert ys.dtype == np.float32


@pytest.mark.torch
def test_gru_sequence_matches_torch_multilayer() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    num_layers = 3
    module = torch.nn.GRU(INPUT, HIDDEN, num_layers=num_layers)
    rng = np.random.default_rng(2)
    xs = _rand(rng, T, BATCH, INPUT, scale=2.0)
    h0 = _rand(rng, num_layers, BATCH, HIDDEN)
    with torch.no_grad():
        y, h_t = module(torch.from_numpy(xs), torch.from_numpy(h0))
    state = {k: v.numpy() for k, v in module.state_dict().items()}

    ys, h_np = gru_sequence(xs, h0, gru_from_torch(state, num_layers))

    np.testing.assert_allclose(ys, y.numpy(), atol=TOL)
    np.testing.assert_allclose(h_np, h_t.numpy(), atol=TOL)


# -------------------------------------------------------------------------- onnx


def _run_onnx_node(op: str, feeds: dict[str, np.ndarray], **attrs: Any) -> list[np.ndarray]:
    """Build a one-node model around the ONNX ``op`` and run the reference evaluator."""
    onnx = pytest.importorskip("onnx")
    reference = pytest.importorskip("onnx.reference")
    helper = onnx.helper
    # Input 4 of LSTM/GRU is sequence_lens; "" leaves it out.
    node_inputs = ["X", "W", "R", "B", "", "initial_h"] + (["initial_c"] if op == "LSTM" else [])
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    steps, batch, hidden = feeds["X"].shape[0], feeds["X"].shape[1], feeds["R"].shape[-1]
    output_shapes = [[steps, 1, batch, hidden], [1, batch, hidden], [1, batch, hidden]]
    node = helper.make_node(op, node_inputs, outputs, **attrs)
    graph = helper.make_graph(
        [node],
        f"one_{op.lower()}",
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(value.shape))
            for name, value in feeds.items()
        ],
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
            for name, shape in zip(outputs, output_shapes, strict=False)
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    result: list[np.ndarray] = reference.ReferenceEvaluator(model).run(None, feeds)
    return result


def _onnx_feeds(rng: np.random.Generator, gates: int, with_c: bool) -> dict[str, np.ndarray]:
    feeds = {
        "X": _rand(rng, T, BATCH, INPUT, scale=2.0),
        "W": _rand(rng, 1, gates * HIDDEN, INPUT),
        "R": _rand(rng, 1, gates * HIDDEN, HIDDEN),
        "B": _rand(rng, 1, 2 * gates * HIDDEN),
        "initial_h": _rand(rng, 1, BATCH, HIDDEN),
    }
    if with_c:
        feeds["initial_c"] = _rand(rng, 1, BATCH, HIDDEN)
    return feeds


def test_lstm_matches_onnx_reference_operator() -> None:
    feeds = _onnx_feeds(np.random.default_rng(3), gates=4, with_c=True)
    y, y_h, y_c = _run_onnx_node("LSTM", feeds, hidden_size=HIDDEN)

    weights = lstm_from_onnx(feeds["W"], feeds["R"], feeds["B"])
    ys, h_t, c_t = lstm_sequence(feeds["X"], feeds["initial_h"], feeds["initial_c"], [weights])

    np.testing.assert_allclose(ys, y[:, 0], atol=TOL)  # Y is (T, num_directions, B, H)
    np.testing.assert_allclose(h_t, y_h, atol=TOL)
    np.testing.assert_allclose(c_t, y_c, atol=TOL)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_matches_onnx_reference_operator(linear_before_reset: int) -> None:
    feeds = _onnx_feeds(np.random.default_rng(4), gates=3, with_c=False)
    y, y_h = _run_onnx_node(
        "GRU", feeds, hidden_size=HIDDEN, linear_before_reset=linear_before_reset
    )

    weights = gru_from_onnx(feeds["W"], feeds["R"], feeds["B"], linear_before_reset)
    ys, h_t = gru_sequence(feeds["X"], feeds["initial_h"], [weights])

    np.testing.assert_allclose(ys, y[:, 0], atol=TOL)
    np.testing.assert_allclose(h_t, y_h, atol=TOL)


def test_gru_conventions_really_differ() -> None:
    # Guards the test above: if both settings gave the same numbers it would not
    # show that linear_before_reset is honoured.
    feeds = _onnx_feeds(np.random.default_rng(4), gates=3, with_c=False)
    outs = [
        gru_sequence(
            feeds["X"],
            feeds["initial_h"],
            [gru_from_onnx(feeds["W"], feeds["R"], feeds["B"], lbr)],
        )[0]
        for lbr in (0, 1)
    ]
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


# -------------------------------------------------------------------- round trips


def test_lstm_onnx_round_trip_is_exact() -> None:
    rng = np.random.default_rng(5)
    W, R = (_rand(rng, 1, 4 * HIDDEN, n) for n in (INPUT, HIDDEN))
    B = _rand(rng, 1, 8 * HIDDEN)
    for got, want in zip(lstm_to_onnx(lstm_from_onnx(W, R, B)), (W, R, B), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_gru_onnx_round_trip_is_exact() -> None:
    rng = np.random.default_rng(6)
    W, R = (_rand(rng, 1, 3 * HIDDEN, n) for n in (INPUT, HIDDEN))
    B = _rand(rng, 1, 6 * HIDDEN)
    for got, want in zip(gru_to_onnx(gru_from_onnx(W, R, B)), (W, R, B), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_lstm_from_onnx_reorders_gates() -> None:
    # Fill each ONNX gate block (order i, o, f, c) with its own constant and check
    # where each lands in the canonical order i, f, g, o.
    blocks = {"i": 1.0, "o": 2.0, "f": 3.0, "c": 4.0}
    W = np.concatenate([np.full((HIDDEN, INPUT), v, np.float32) for v in blocks.values()])
    R = np.concatenate([np.full((HIDDEN, HIDDEN), v, np.float32) for v in blocks.values()])
    weights = lstm_from_onnx(W, R)
    assert weights.w_ih[::HIDDEN, 0].tolist() == [1.0, 3.0, 4.0, 2.0]
    assert weights.w_hh[::HIDDEN, 0].tolist() == [1.0, 3.0, 4.0, 2.0]
    assert not weights.b_ih.any() and not weights.b_hh.any()


def test_keras_layout_recovers_torch_weights() -> None:
    rng = np.random.default_rng(7)
    torch_layout = LstmWeights(
        w_ih=_rand(rng, 4 * HIDDEN, INPUT),
        w_hh=_rand(rng, 4 * HIDDEN, HIDDEN),
        b_ih=_rand(rng, 4 * HIDDEN),
        b_hh=_rand(rng, 4 * HIDDEN),
    )
    # Build the Keras arrays gate by gate, by name, so the test states the mapping
    # rather than assuming the two orders coincide.
    torch_order, keras_order = ("i", "f", "g", "o"), ("i", "f", "c", "o")
    keras_to_torch_name = {"i": "i", "f": "f", "c": "g", "o": "o"}
    rows = [torch_order.index(keras_to_torch_name[gate]) for gate in keras_order]

    def keras(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.split(a, 4)[k] for k in rows])

    kernel = keras(torch_layout.w_ih).T  # (I, 4H)
    recurrent_kernel = keras(torch_layout.w_hh).T  # (H, 4H)
    bias = keras(torch_layout.b_ih + torch_layout.b_hh)  # Keras has one bias
    assert kernel.shape == (INPUT, 4 * HIDDEN) and recurrent_kernel.shape == (HIDDEN, 4 * HIDDEN)

    weights = lstm_from_keras(kernel, recurrent_kernel, bias)

    np.testing.assert_array_equal(weights.w_ih, torch_layout.w_ih)
    np.testing.assert_array_equal(weights.w_hh, torch_layout.w_hh)
    np.testing.assert_array_equal(weights.b_ih, torch_layout.b_ih + torch_layout.b_hh)
    np.testing.assert_array_equal(weights.b_hh, 0)
    xs = _rand(rng, T, BATCH, INPUT, scale=2.0)
    zeros = np.zeros((1, BATCH, HIDDEN), np.float32)
    np.testing.assert_allclose(
        lstm_sequence(xs, zeros, zeros, [weights])[0],
        lstm_sequence(xs, zeros, zeros, [torch_layout])[0],
        atol=TOL,
    )


# -------------------------------------------------------------------- bad shapes


def _lstm_weights(rng: np.random.Generator) -> LstmWeights:
    return LstmWeights(
        w_ih=_rand(rng, 4 * HIDDEN, INPUT),
        w_hh=_rand(rng, 4 * HIDDEN, HIDDEN),
        b_ih=_rand(rng, 4 * HIDDEN),
        b_hh=_rand(rng, 4 * HIDDEN),
    )


def test_wrong_state_shape_names_the_array_and_both_shapes() -> None:
    rng = np.random.default_rng(8)
    weights = _lstm_weights(rng)
    x = _rand(rng, BATCH, INPUT)
    good = _rand(rng, BATCH, HIDDEN)
    with pytest.raises(ValueError, match=r"c has shape \(4, 6\), expected \(4, 7\)"):
        lstm_cell(x, good, _rand(rng, BATCH, HIDDEN - 1), weights)
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\), expected \(4, 5\)"):
        lstm_cell(_rand(rng, BATCH, 3), good, good, weights)


def test_wrong_layer_count_is_rejected() -> None:
    rng = np.random.default_rng(9)
    weights = _lstm_weights(rng)
    state = np.zeros((2, BATCH, HIDDEN), np.float32)
    with pytest.raises(ValueError, match=r"h has shape \(2, 4, 7\), expected \(1, 4, hidden\)"):
        lstm_step(_rand(rng, BATCH, INPUT), state, state, [weights])


def test_wrong_weight_shapes_are_rejected() -> None:
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match=r"LstmWeights.b_hh has shape \(27,\), expected \(28,\)"):
        LstmWeights(
            w_ih=_rand(rng, 4 * HIDDEN, INPUT),
            w_hh=_rand(rng, 4 * HIDDEN, HIDDEN),
            b_ih=_rand(rng, 4 * HIDDEN),
            b_hh=_rand(rng, 4 * HIDDEN - 1),
        )
    with pytest.raises(ValueError, match=r"B has shape \(55,\), expected \(56,\)"):
        lstm_from_onnx(
            _rand(rng, 4 * HIDDEN, INPUT), _rand(rng, 4 * HIDDEN, HIDDEN), _rand(rng, 55)
        )
    with pytest.raises(ValueError, match="only a single direction"):
        gru_from_onnx(_rand(rng, 2, 3 * HIDDEN, INPUT), _rand(rng, 2, 3 * HIDDEN, HIDDEN))


def test_torch_state_without_a_layer_is_rejected() -> None:
    rng = np.random.default_rng(11)
    w = _lstm_weights(rng)
    state = {"weight_ih_l0": w.w_ih, "weight_hh_l0": w.w_hh, "bias_ih_l0": w.b_ih}
    with pytest.raises(ValueError, match="'bias_ih_l0' but not its partner"):
        lstm_from_torch(state, layers=1)
    state["bias_hh_l0"] = w.b_hh
    with pytest.raises(ValueError, match="no 'weight_ih_l1'"):
        lstm_from_torch(state, layers=2)
