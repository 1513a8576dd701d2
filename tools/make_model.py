"""Build a servable ONNX step model with random, seeded weights.

The model follows the model contract (docs/model-contract.md): input ``x``
``[batch, features]`` plus the recurrent state ``h`` (and ``c`` for an LSTM),
each ``[layers, batch, hidden]``; outputs ``y`` ``[batch, outputs]`` plus
``h_out`` (and ``c_out``). It is an untrained placeholder, used as the shipped
default model and in tests; the same arguments always give the same bytes.

    python tools/make_model.py --cell lstm --layers 2 --hidden 64 -o models/random_lstm.onnx

This tool needs the ``onnx`` package (a dev dependency); the runtime does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what the installed onnxruntime accepts
BATCH = "batch"


def default_feature_names(features: int) -> list[str]:
    return [f"f{i:02d}" for i in range(features)]


def default_output_names(outputs: int) -> list[str]:
    return ["steer", "accel"] if outputs == 2 else [f"y{i}" for i in range(outputs)]


def build_step_model(
    *,
    cell: str = "lstm",
    layers: int = 2,
    hidden: int = 64,
    features: int = 16,
    outputs: int = 2,
    seed: int = 0,
    normalize: bool = True,
    feature_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> onnx.ModelProto:
    """An ONNX step model: ``(x, h[, c]) -> (y, h_out[, c_out])`` with seeded random weights."""
    if cell not in ("lstm", "gru"):
        raise ValueError(f"cell must be 'lstm' or 'gru', not {cell!r}")
    for name, value in (("layers", layers), ("hidden", hidden), ("features", features)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if outputs < 1:
        raise ValueError(f"outputs must be at least 1, not {outputs}")
    feature_names = feature_names or default_feature_names(features)
    output_names = output_names or default_output_names(outputs)
    if len(feature_names) != features or len(output_names) != outputs:
        raise ValueError(
            f"{len(feature_names)} feature names for {features} features and "
            f"{len(output_names)} output names for {outputs} outputs; they must match"
        )
    rng = np.random.default_rng(seed)
    gates = 4 if cell == "lstm" else 3
    bound = 1.0 / np.sqrt(hidden)

    def uniform(*shape: int) -> np.ndarray:
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def node(op: str, inputs: list[str], outs: list[str], **attrs: Any) -> None:
        nodes.append(helper.make_node(op, inputs, outs, name=f"{op.lower()}_{len(nodes)}", **attrs))

    metadata = {
        "feature_names": json.dumps(feature_names),
        "output_names": json.dumps(output_names),
        "cell": cell,
        "task": "random-init (untrained placeholder)",
        "generator": f"tools/make_model.py seed={seed}",
    }
    x = "x"
    if normalize:
        mean = rng.normal(0.0, 1.0, size=features).astype(np.float32)
        std = rng.uniform(0.5, 2.0, size=features).astype(np.float32)
        node("Sub", [x, const("norm_mean", mean)], ["x_centred"])
        node("Div", ["x_centred", const("norm_std", std)], ["x_norm"])
        x = "x_norm"
        metadata["normalization"] = json.dumps(
            {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "folded": True}
        )
    axis0 = const("axes_0", np.array([0], dtype=np.int64))
    node("Unsqueeze", [x, axis0], ["seq_0"])  # (1, B, F): a sequence of one step
    states = ["h", "c"] if cell == "lstm" else ["h"]
    layer_outs: dict[str, list[str]] = {s: [] for s in states}
    seq, width = "seq_0", features
    for k in range(layers):
        start = const(f"slice_start_{k}", np.array([k], dtype=np.int64))
        end = const(f"slice_end_{k}", np.array([k + 1], dtype=np.int64))
        for s in states:  # this layer's state, (1, B, H)
            node("Slice", [s, start, end, axis0], [f"{s}_{k}"])
        w = const(f"W_{k}", uniform(1, gates * hidden, width))
        r = const(f"R_{k}", uniform(1, gates * hidden, hidden))
        b = const(f"B_{k}", uniform(1, 2 * gates * hidden))
        outs = [f"Y_{k}", *(f"{s}_out_{k}" for s in states)]
        if cell == "lstm":
            node("LSTM", [seq, w, r, b, "", f"h_{k}", f"c_{k}"], outs, hidden_size=hidden)
        else:
            node("GRU", [seq, w, r, b, "", f"h_{k}"], outs, hidden_size=hidden,
                 linear_before_reset=1)  # fmt: skip
        for s in states:
            layer_outs[s].append(f"{s}_out_{k}")
        # Y is (1, 1, B, H) = (seq, directions, B, H); drop the directions axis.
        axis1 = const(f"axes_1_{k}", np.array([1], dtype=np.int64))
        node("Squeeze", [f"Y_{k}", axis1], [f"seq_{k + 1}"])
        seq, width = f"seq_{k + 1}", hidden
    node("Squeeze", [seq, axis0], ["top"])  # (B, H)
    head_w = const("head_W", uniform(outputs, hidden))
    head_b = const("head_b", uniform(outputs))
    node("Gemm", ["top", head_w, head_b], ["y"], transB=1)
    for s in states:
        node("Concat", layer_outs[s], [f"{s}_out"], axis=0)

    state_shape: list[int | str] = [layers, BATCH, hidden]
    graph = helper.make_graph(
        nodes,
        f"{cell}_step",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, features]),
            *(helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape) for s in states),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, outputs]),
            *(
                helper.make_tensor_value_info(f"{s}_out", TensorProto.FLOAT, state_shape)
                for s in states
            ),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="lstm-stream tools/make_model.py",
        producer_version="1",
    )
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--outputs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="feed x to the first layer as is")  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, help="default: models/random_<cell>.onnx")
    args = parser.parse_args(argv)
    try:
        model = build_step_model(
            cell=args.cell,
            layers=args.layers,
            hidden=args.hidden,
            features=args.features,
            outputs=args.outputs,
            seed=args.seed,
            normalize=args.normalize,
        )
    except ValueError as err:
        parser.error(str(err))
    path: Path = args.output or Path("models") / f"random_{args.cell}.onnx"
    data = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"{path}  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
