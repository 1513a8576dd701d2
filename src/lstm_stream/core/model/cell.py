"""Reference LSTM and GRU maths in plain numpy, and converters between weight layouts.

This module is the ground truth the backends and exports are checked against
(see docs/lstm.md). It uses numpy only, so it runs wherever the runtime runs.

Weights are held in PyTorch's canonical layout: ``W_ih @ x`` with the gate blocks
stacked along the first axis, and two biases ``b_ih`` and ``b_hh``.

LSTM, gate order i, f, g, o (``*`` is the element-wise product, ``s`` the logistic
sigmoid)::

    i  = s(W_ii x + b_ii + W_hi h + b_hi)       input gate
    f  = s(W_if x + b_if + W_hf h + b_hf)       forget gate
    g  = tanh(W_ig x + b_ig + W_hg h + b_hg)    candidate cell
    o  = s(W_io x + b_io + W_ho h + b_ho)       output gate
    c' = f * c + i * g
    h' = o * tanh(c')

GRU, gate order r, z, n::

    r  = s(W_ir x + b_ir + W_hr h + b_hr)       reset gate
    z  = s(W_iz x + b_iz + W_hz h + b_hz)       update gate
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))      linear_before_reset=True (PyTorch)
    n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      linear_before_reset=False (ONNX default)
    h' = (1 - z) * n + z * h

In a stack of L layers, layer k's new ``h'`` is the input ``x`` of layer k + 1 in
the same time step; the top layer's ``h'`` is the output. States are
``(L, B, H)``: layers, batch, hidden.

Arithmetic runs in the dtype of ``x``: float32 inputs give float32 outputs even
when the weights are float64, because the runtime is float32 and a reference that
silently computes in float64 would hide the rounding the runtime really has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]


class CellKind(StrEnum):
    """The recurrent cell of a model (its ``cell`` metadata, or what its graph holds)."""

    LSTM = "lstm"
    GRU = "gru"
    CUSTOM = "custom"  # neither: a graph of other operators, stepped all the same


# Block permutations between gate orders: ``new_blocks = old_blocks[perm]``.
_LSTM_ONNX_TO_CANONICAL = (0, 2, 3, 1)  # ONNX i, o, f, c  -> i, f, g, o
_LSTM_CANONICAL_TO_ONNX = (0, 3, 1, 2)  # i, f, g, o      -> ONNX i, o, f, c
_GRU_ONNX_TO_CANONICAL = (1, 0, 2)  # ONNX z, r, h -> r, z, n (its own inverse)
_GRU_CANONICAL_TO_ONNX = (1, 0, 2)


def _check_shape(name: str, array: npt.NDArray[Any], expected: tuple[int, ...]) -> None:
    if array.shape != expected:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}, expected {expected}; "
            "see docs/lstm.md for the layout of each array."
        )


def _check_weights(
    w_ih: FloatArray, w_hh: FloatArray, b_ih: FloatArray, b_hh: FloatArray, gates: int, kind: str
) -> None:
    """Shared shape validation; ``hidden`` is read from ``w_hh``, which must be square per gate."""
    if w_hh.ndim != 2:
        raise ValueError(
            f"{kind}.w_hh has shape {tuple(w_hh.shape)}, expected ({gates}*hidden, hidden)"
        )
    hidden = w_hh.shape[1]
    _check_shape(f"{kind}.w_hh", w_hh, (gates * hidden, hidden))
    if w_ih.ndim != 2:
        raise ValueError(
            f"{kind}.w_ih has shape {tuple(w_ih.shape)}, expected ({gates * hidden}, input_size)"
        )
    _check_shape(f"{kind}.w_ih", w_ih, (gates * hidden, w_ih.shape[1]))
    _check_shape(f"{kind}.b_ih", b_ih, (gates * hidden,))
    _check_shape(f"{kind}.b_hh", b_hh, (gates * hidden,))


class _LayerShape:
    """``hidden`` and ``input_size`` of a layer, read off its weight matrices."""

    w_ih: FloatArray
    w_hh: FloatArray

    @property
    def hidden(self) -> int:
        return int(self.w_hh.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.w_ih.shape[1])


# eq=False: the generated __eq__/__hash__ would compare arrays element-wise and
# fail on truth-testing; identity semantics are the honest choice for weights.
@dataclass(frozen=True, eq=False)
class LstmWeights(_LayerShape):
    """One LSTM layer in PyTorch's layout, gate order i, f, g, o."""

    w_ih: FloatArray  # (4H, I)
    w_hh: FloatArray  # (4H, H)
    b_ih: FloatArray  # (4H,)
    b_hh: FloatArray  # (4H,)

    def __post_init__(self) -> None:
        _check_weights(self.w_ih, self.w_hh, self.b_ih, self.b_hh, 4, "LstmWeights")


@dataclass(frozen=True, eq=False)
class GruWeights(_LayerShape):
    """One GRU layer in PyTorch's layout, gate order r, z, n."""

    w_ih: FloatArray  # (3H, I)
    w_hh: FloatArray  # (3H, H)
    b_ih: FloatArray  # (3H,)
    b_hh: FloatArray  # (3H,)
    # True is PyTorch's GRU; False is the ONNX operator's default. They differ only
    # in whether the reset gate scales h before or after the W_hn product.
    linear_before_reset: bool = True

    def __post_init__(self) -> None:
        _check_weights(self.w_ih, self.w_hh, self.b_ih, self.b_hh, 3, "GruWeights")


# --------------------------------------------------------------------------- maths


def sigmoid(z: FloatArray) -> FloatArray:
    """Logistic sigmoid that never overflows: exp is only taken of -|z| <= 0."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    out: FloatArray = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return out


def _compute_dtype(x: FloatArray) -> np.dtype[Any]:
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x has dtype {x.dtype}, expected a floating dtype such as float32")
    return x.dtype


def _check_cell_inputs(
    x: FloatArray, states: Mapping[str, FloatArray], input_size: int, hidden: int
) -> None:
    if x.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (batch, {input_size})")
    batch = x.shape[0]
    _check_shape("x", x, (batch, input_size))
    for name, state in states.items():
        _check_shape(name, state, (batch, hidden))


def lstm_cell(
    x: FloatArray, h: FloatArray, c: FloatArray, w: LstmWeights
) -> tuple[FloatArray, FloatArray]:
    """One LSTM layer, one step: x (B, I), h and c (B, H) -> (h', c')."""
    _check_cell_inputs(x, {"h": h, "c": c}, w.input_size, w.hidden)
    dtype = _compute_dtype(x)
    hid = w.hidden
    # astype(copy=False) is free when the weights already match x's dtype.
    gates = (
        x @ w.w_ih.T.astype(dtype, copy=False)
        + h.astype(dtype, copy=False) @ w.w_hh.T.astype(dtype, copy=False)
        + w.b_ih.astype(dtype, copy=False)
        + w.b_hh.astype(dtype, copy=False)
    )  # (B, 4H)
    i = sigmoid(gates[:, 0 * hid : 1 * hid])
    f = sigmoid(gates[:, 1 * hid : 2 * hid])
    g = np.tanh(gates[:, 2 * hid : 3 * hid])
    o = sigmoid(gates[:, 3 * hid : 4 * hid])
    c_new: FloatArray = f * c.astype(dtype, copy=False) + i * g
    h_new: FloatArray = o * np.tanh(c_new)
    return h_new, c_new


def gru_cell(x: FloatArray, h: FloatArray, w: GruWeights) -> FloatArray:
    """One GRU layer, one step: x (B, I), h (B, H) -> h'."""
    _check_cell_inputs(x, {"h": h}, w.input_size, w.hidden)
    dtype = _compute_dtype(x)
    hid = w.hidden
    h = h.astype(dtype, copy=False)
    w_hh = w.w_hh.astype(dtype, copy=False)
    b_hh = w.b_hh.astype(dtype, copy=False)
    gx = x @ w.w_ih.T.astype(dtype, copy=False) + w.b_ih.astype(dtype, copy=False)  # (B, 3H)
    # r and z see the same recurrent term under both conventions; only n differs.
    gh_rz = h @ w_hh[: 2 * hid].T + b_hh[: 2 * hid]  # (B, 2H)
    r = sigmoid(gx[:, :hid] + gh_rz[:, :hid])
    z = sigmoid(gx[:, hid : 2 * hid] + gh_rz[:, hid:])
    w_hn, b_hn = w_hh[2 * hid :], b_hh[2 * hid :]
    recurrent_n = r * (h @ w_hn.T + b_hn) if w.linear_before_reset else (r * h) @ w_hn.T + b_hn
    n = np.tanh(gx[:, 2 * hid :] + recurrent_n)
    h_new: FloatArray = (1 - z) * n + z * h
    return h_new


def _check_stack(name: str, state: FloatArray, layers: int, batch: int) -> None:
    if state.ndim != 3 or state.shape[:2] != (layers, batch):
        raise ValueError(
            f"{name} has shape {tuple(state.shape)}, expected ({layers}, {batch}, hidden) "
            "(layers, batch, hidden)"
        )


def lstm_step(
    x: FloatArray, h: FloatArray, c: FloatArray, layers: Sequence[LstmWeights]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One step through a stack: x (B, I), h and c (L, B, H) -> (top h' (B, H), h', c')."""
    _check_stack("h", h, len(layers), x.shape[0])
    _check_stack("c", c, len(layers), x.shape[0])
    hs: list[FloatArray] = []
    cs: list[FloatArray] = []
    inp = x
    for k, w in enumerate(layers):
        h_k, c_k = lstm_cell(inp, h[k], c[k], w)
        hs.append(h_k)
        cs.append(c_k)
        inp = h_k  # the next layer reads this layer's new h, in the same step
    return inp, np.stack(hs), np.stack(cs)


def gru_step(
    x: FloatArray, h: FloatArray, layers: Sequence[GruWeights]
) -> tuple[FloatArray, FloatArray]:
    """One step through a stack: x (B, I), h (L, B, H) -> (top h' (B, H), h')."""
    _check_stack("h", h, len(layers), x.shape[0])
    hs: list[FloatArray] = []
    inp = x
    for k, w in enumerate(layers):
        inp = gru_cell(inp, h[k], w)
        hs.append(inp)
    return inp, np.stack(hs)


def _check_sequence(xs: FloatArray) -> None:
    if xs.ndim != 3:
        raise ValueError(f"xs has shape {tuple(xs.shape)}, expected (time, batch, input_size)")


def lstm_sequence(
    xs: FloatArray, h: FloatArray, c: FloatArray, layers: Sequence[LstmWeights]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run T steps: xs (T, B, I) -> (top hs (T, B, H), h_T (L, B, H), c_T (L, B, H))."""
    _check_sequence(xs)
    tops: list[FloatArray] = []
    for x in xs:
        top, h, c = lstm_step(x, h, c, layers)
        tops.append(top)
    return np.stack(tops), h, c


def gru_sequence(
    xs: FloatArray, h: FloatArray, layers: Sequence[GruWeights]
) -> tuple[FloatArray, FloatArray]:
    """Run T steps: xs (T, B, I) -> (top hs (T, B, H), h_T (L, B, H))."""
    _check_sequence(xs)
    tops: list[FloatArray] = []
    for x in xs:
        top, h = gru_step(x, h, layers)
        tops.append(top)
    return np.stack(tops), h


# ---------------------------------------------------------------------- converters


def _reorder_blocks(array: FloatArray, perm: Sequence[int]) -> FloatArray:
    """Permute the equal gate blocks stacked along axis 0."""
    blocks = np.split(array, len(perm), axis=0)
    out: FloatArray = np.concatenate([blocks[p] for p in perm], axis=0)
    return out


def _one_direction(name: str, array: FloatArray, ndim: int) -> FloatArray:
    """Drop the ONNX num_directions axis, refusing bidirectional weights."""
    if array.ndim == ndim + 1:
        if array.shape[0] != 1:
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}, expected (1, ...): "
                "only a single direction is supported"
            )
        single: FloatArray = array[0]
        return single
    if array.ndim != ndim:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}, expected {ndim} or {ndim + 1} dimensions"
        )
    return array


def _split_onnx(
    W: FloatArray, R: FloatArray, B: FloatArray | None, gates: int
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """ONNX W, R, B for one direction -> (W, R, Wb, Rb) without the direction axis."""
    w = _one_direction("W", W, 2)
    r = _one_direction("R", R, 2)
    if r.ndim != 2 or r.shape[0] % gates:
        raise ValueError(f"R has shape {tuple(R.shape)}, expected (1, {gates}*hidden, hidden)")
    hidden = r.shape[0] // gates
    _check_shape("R", r, (gates * hidden, hidden))
    _check_shape("W", w, (gates * hidden, w.shape[1]))
    if B is None:
        b = np.zeros(2 * gates * hidden, dtype=w.dtype)
    else:
        b = _one_direction("B", B, 1)
        _check_shape("B", b, (2 * gates * hidden,))
    return w, r, b[: gates * hidden], b[gates * hidden :]


def lstm_from_onnx(W: FloatArray, R: FloatArray, B: FloatArray | None = None) -> LstmWeights:
    """ONNX LSTM operator inputs for one direction (gate order i, o, f, c) -> LstmWeights.

    ``W`` (1, 4H, I) or (4H, I); ``R`` (1, 4H, H) or (4H, H); ``B`` (1, 8H) or (8H,)
    holding ``[Wb | Rb]``, or None for zeros. Peepholes (``P``) are not supported.
    """
    w, r, wb, rb = _split_onnx(W, R, B, 4)
    perm = _LSTM_ONNX_TO_CANONICAL
    return LstmWeights(
        w_ih=_reorder_blocks(w, perm),
        w_hh=_reorder_blocks(r, perm),
        b_ih=_reorder_blocks(wb, perm),
        b_hh=_reorder_blocks(rb, perm),
    )


def lstm_to_onnx(w: LstmWeights) -> tuple[FloatArray, FloatArray, FloatArray]:
    """LstmWeights -> ONNX LSTM inputs W (1, 4H, I), R (1, 4H, H), B (1, 8H), order i, o, f, c."""
    perm = _LSTM_CANONICAL_TO_ONNX
    b = np.concatenate([_reorder_blocks(w.b_ih, perm), _reorder_blocks(w.b_hh, perm)])
    return _reorder_blocks(w.w_ih, perm)[None], _reorder_blocks(w.w_hh, perm)[None], b[None]


def gru_from_onnx(
    W: FloatArray, R: FloatArray, B: FloatArray | None = None, linear_before_reset: int = 0
) -> GruWeights:
    """ONNX GRU operator inputs for one direction (gate order z, r, h) -> GruWeights.

    ``linear_before_reset`` is the operator's attribute (default 0), carried over so
    the weights are evaluated with the same equation the ONNX graph uses.
    """
    w, r, wb, rb = _split_onnx(W, R, B, 3)
    perm = _GRU_ONNX_TO_CANONICAL
    return GruWeights(
        w_ih=_reorder_blocks(w, perm),
        w_hh=_reorder_blocks(r, perm),
        b_ih=_reorder_blocks(wb, perm),
        b_hh=_reorder_blocks(rb, perm),
        linear_before_reset=bool(linear_before_reset),
    )


def gru_to_onnx(w: GruWeights) -> tuple[FloatArray, FloatArray, FloatArray]:
    """GruWeights -> ONNX GRU inputs W (1, 3H, I), R (1, 3H, H), B (1, 6H), order z, r, h.

    Set the node's ``linear_before_reset`` attribute to ``int(w.linear_before_reset)``.
    """
    perm = _GRU_CANONICAL_TO_ONNX
    b = np.concatenate([_reorder_blocks(w.b_ih, perm), _reorder_blocks(w.b_hh, perm)])
    return _reorder_blocks(w.w_ih, perm)[None], _reorder_blocks(w.w_hh, perm)[None], b[None]


def _torch_layer(
    module_state: Mapping[str, FloatArray], k: int, gates: int
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Read layer k of an nn.LSTM/nn.GRU state dict; a module built with bias=False has none."""
    for unsupported in (f"weight_hr_l{k}", f"weight_ih_l{k}_reverse"):
        if unsupported in module_state:
            raise ValueError(
                f"module_state has {unsupported!r}: projections (proj_size) and "
                "bidirectional modules are not supported"
            )
    names = (f"weight_ih_l{k}", f"weight_hh_l{k}")
    missing = [n for n in names if n not in module_state]
    if missing:
        raise ValueError(
            f"module_state has no {missing[0]!r}; keys present: {sorted(module_state)}"
        )
    w_ih, w_hh = (np.asarray(module_state[n]) for n in names)
    bias_names = (f"bias_ih_l{k}", f"bias_hh_l{k}")
    present = [n for n in bias_names if n in module_state]
    if len(present) == 1:
        # Half a bias is a truncated state dict, not a bias=False module.
        raise ValueError(f"module_state has {present[0]!r} but not its partner; expected both")
    zeros = np.zeros(w_hh.shape[0], dtype=w_hh.dtype)
    b_ih, b_hh = (np.asarray(module_state.get(n, zeros)) for n in bias_names)
    return w_ih, w_hh, b_ih, b_hh


def lstm_from_torch(module_state: Mapping[str, FloatArray], layers: int) -> list[LstmWeights]:
    """``nn.LSTM.state_dict()`` as numpy arrays -> one LstmWeights per layer.

    PyTorch's gate order is already canonical, so this only unpacks the keys.
    """
    return [LstmWeights(*_torch_layer(module_state, k, 4)) for k in range(layers)]


def gru_from_torch(module_state: Mapping[str, FloatArray], layers: int) -> list[GruWeights]:
    """``nn.GRU.state_dict()`` as numpy arrays -> one GruWeights per layer (PyTorch semantics)."""
    return [
        GruWeights(*_torch_layer(module_state, k, 3), linear_before_reset=True)
        for k in range(layers)
    ]


def lstm_from_keras(
    kernel: FloatArray, recurrent_kernel: FloatArray, bias: FloatArray
) -> LstmWeights:
    """Keras LSTM weights -> LstmWeights.

    Keras stores ``x @ kernel`` (so kernels are transposed) with gate order i, f, c, o,
    which is the canonical order under another name; it has one bias, taken as
    ``b_ih`` with ``b_hh`` zero (only their sum ever matters).
    """
    for name, array in (("kernel", kernel), ("recurrent_kernel", recurrent_kernel)):
        if array.ndim != 2:
            raise ValueError(f"{name} has shape {tuple(array.shape)}, expected 2 dimensions")
    hidden = recurrent_kernel.shape[0]
    _check_shape("recurrent_kernel", recurrent_kernel, (hidden, 4 * hidden))
    _check_shape("kernel", kernel, (kernel.shape[0], 4 * hidden))
    _check_shape("bias", bias, (4 * hidden,))
    return LstmWeights(
        w_ih=np.ascontiguousarray(kernel.T),
        w_hh=np.ascontiguousarray(recurrent_kernel.T),
        b_ih=bias,
        b_hh=np.zeros_like(bias),
    )
