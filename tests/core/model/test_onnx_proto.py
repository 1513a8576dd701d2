"""The dependency-free ONNX reader against the `onnx` package, and on broken files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lstm_stream.core.errors import ModelFormatError
from lstm_stream.core.model.contract import load_contract
from lstm_stream.core.model.onnx_proto import OnnxModel, ValueInfo, read_model

from helpers.tools import build_step_model


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    if not vi.type.tensor_type.HasField("shape"):
        return ()
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        kind = d.WhichOneof("value")
        out.append(d.dim_value if kind == "dim_value" else d.dim_param if kind else None)
    return tuple(out)


def _attr(a: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, onnx.GraphProto):
        return value.SerializeToString()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    if isinstance(value, list) and value and isinstance(value[0], TensorProto):
        return [numpy_helper.to_array(v) for v in value]
    return value


def assert_matches_onnx(model: onnx.ModelProto, got: OnnxModel) -> None:
    """Everything read_model returns equals what the onnx package reads."""
    g = model.graph
    init_names = {t.name for t in g.initializer}
    assert got.ir_version == model.ir_version
    assert got.producer_name == model.producer_name
    assert got.producer_version == model.producer_version
    assert got.opset == {o.domain: o.version for o in model.opset_import}
    assert got.metadata == {p.key: p.value for p in model.metadata_props}
    want_inputs = [
        ValueInfo(vi.name, vi.type.tensor_type.elem_type, _dims(vi))
        for vi in g.input
        if vi.name not in init_names
    ]
    assert list(got.inputs) == want_inputs
    assert list(got.outputs) == [
        ValueInfo(vi.name, vi.type.tensor_type.elem_type, _dims(vi)) for vi in g.output
    ]
    assert list(got.initializers) == [t.name for t in g.initializer]
    for t in g.initializer:
        want = numpy_helper.to_array(t)
        assert got.initializers[t.name].dtype == want.dtype, t.name
        np.testing.assert_array_equal(got.initializers[t.name], want, err_msg=t.name)
    assert len(got.nodes) == len(g.node)
    for node, want_node in zip(got.nodes, g.node, strict=True):
        assert (node.op_type, node.name, node.domain) == (
            want_node.op_type, want_node.name, want_node.domain)  # fmt: skip
        assert node.inputs == tuple(want_node.input)
        assert node.outputs == tuple(want_node.output)
        want_attrs = {a.name: _attr(a) for a in want_node.attribute}
        assert set(node.attributes) == set(want_attrs)
        for key, value in want_attrs.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(node.attributes[key], value)
                assert node.attributes[key].dtype == value.dtype
            elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                for a, b in zip(node.attributes[key], value, strict=True):
                    np.testing.assert_array_equal(a, b)
            elif isinstance(value, float):
                assert node.attributes[key] == pytest.approx(value, rel=1e-7)
            else:
                assert node.attributes[key] == value, key


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"cell": "gru", "layers": 1, "hidden": 8, "features": 3, "outputs": 1},
        {"cell": "lstm", "layers": 3, "hidden": 5, "normalize": False, "outputs": 4},
    ],
)
def test_built_models_read_like_onnx_load(model_factory: Any, kwargs: dict[str, Any]) -> None:
    path = model_factory(**kwargs)
    model = onnx.load(str(path))
    got = read_model(path.read_bytes(), source=str(path))
    assert_matches_onnx(model, got)
    assert got.inputs[0].dims[0] == "batch"


def _kitchen_sink_model() -> onnx.ModelProto:
    """Every tensor encoding and attribute type; not meant to run, only to be read."""
    rng = np.random.default_rng(3)
    typed = [  # typed fields (float_data, int32_data, int64_data, ...) instead of raw_data
        helper.make_tensor("f32", TensorProto.FLOAT, [2, 3], rng.normal(size=6).tolist()),
        helper.make_tensor("f64", TensorProto.DOUBLE, [3], [1.5, -2.25, 1e300]),
        helper.make_tensor("i64", TensorProto.INT64, [4], [0, -1, 2**62, -(2**63)]),
        helper.make_tensor("i32", TensorProto.INT32, [2, 2], [-(2**31), 2**31 - 1, 0, -5]),
        helper.make_tensor("i8", TensorProto.INT8, [3], [-128, 127, -1]),
        helper.make_tensor("u8", TensorProto.UINT8, [3], [0, 255, 7]),
        helper.make_tensor("u16", TensorProto.UINT16, [2], [65535, 1]),
        helper.make_tensor("u64", TensorProto.UINT64, [2], [2**64 - 1, 3]),
        helper.make_tensor("b", TensorProto.BOOL, [3], [True, False, True]),
        helper.make_tensor(
            "f16", TensorProto.FLOAT16, [3], np.array([1.5, -0.25, 65504], np.float16)
        ),
        helper.make_tensor("scalar", TensorProto.FLOAT, [], [4.0]),
        helper.make_tensor("empty", TensorProto.FLOAT, [0, 3], []),
        helper.make_tensor("s", TensorProto.STRING, [2], [b"left", "d\u00e9j\u00e0".encode()]),
    ]
    raw = [
        numpy_helper.from_array(rng.normal(size=(2, 5)).astype(np.float32), "raw_f32"),
        numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(3, 2) - 3, "raw_i64"),
        numpy_helper.from_array(np.array([True, False]), "raw_bool"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float64), "raw_f64"),
    ]
    sub = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["b"])],
        "sub",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node(
        "Everything", ["x", "", "f32"], ["out", ""], name="n0", domain="com.example",
        f=0.1, i=-7, s="text", t=raw[0], g=sub, floats=[1.0, -2.5], ints=[1, -2, 2**40],
        strings=["a", "b\u00fc"], tensors=[raw[1], typed[2]], zero=0.0,
    )  # fmt: skip
    nodes = [node, helper.make_node("Identity", ["out"], ["y"])]
    graph = helper.make_graph(
        nodes, "sink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", None, 3]),
         helper.make_tensor_value_info("f32", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("noshape", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [])],
        initializer=typed + raw,
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 2)],
        producer_name="kitchen sink",
    )
    helper.set_model_props(model, {"k": "v\u00e9", "empty": ""})
    return model


def test_every_tensor_encoding_and_attribute_type() -> None:
    model = _kitchen_sink_model()
    got = read_model(model.SerializeToString())
    assert_matches_onnx(model, got)
    assert [vi.name for vi in got.inputs] == ["x", "noshape"]  # 'f32' is an initializer
    assert got.inputs[0].dims == ("n", None, 3)
    assert got.initializers["u64"][0] == 2**64 - 1
    assert got.initializers["s"].tolist() == ["left", "d\u00e9j\u00e0"]


@pytest.fixture(scope="module")
def model_bytes() -> tuple[bytes, int]:
    """A small model's bytes and where its graph field ends."""
    model = build_step_model(layers=2, hidden=4, features=3)
    head = onnx.ModelProto()
    head.CopyFrom(model)
    del head.opset_import[:]
    del head.metadata_props[:]
    # Fields are written in field-number order, so without the fields after the graph
    # (opset_import = 8, metadata_props = 14) the bytes end exactly where the graph ends.
    return model.SerializeToString(), len(head.SerializeToString())


def test_truncated_files_are_refused(model_bytes: tuple[bytes, int]) -> None:
    data, graph_end = model_bytes
    cuts = sorted({*range(0, 64), *range(0, len(data), 7), *range(graph_end - 64, len(data))})
    for cut in cuts:
        if cut < graph_end:
            with pytest.raises(ModelFormatError, match=r"'cut\.onnx'.* at byte \d+"):
                read_model(data[:cut], source="cut.onnx")
        else:  # a prefix that ends between top-level fields is a valid, smaller model
            with contextlib.suppress(ModelFormatError):
                read_model(data[:cut], source="cut.onnx")


def test_random_corruption_raises_only_model_format_error(
    model_bytes: tuple[bytes, int],
) -> None:
    data, _ = model_bytes
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(400):
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), size=1 + trial % 8):
            buf[pos] = int(rng.integers(0, 256))
        try:
            read_model(bytes(buf), source="corrupt.onnx")
        except ModelFormatError as err:
            assert "corrupt.onnx" in str(err)
            refused += 1
    for _ in range(200):  # pure noise
        try:
            read_model(rng.bytes(int(rng.integers(1, 400))), source="noise")
        except ModelFormatError:
            refused += 1
    assert refused > 100


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "no graph"),
        (b"\x08" + b"\xff" * 11, "varint longer than 10 bytes at byte 1"),
        (b"\x08\x80", "truncated varint at byte 1"),
        (b"\x3a\xff\xff\xff\xff\x0f", "claims 4294967295 bytes, past the end"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x3a\x02\x00\x00", "field number 0"),
        (b"\x0a\x01x", "field 1 is length-delimited, expected varint"),
        (b"\x12\x02\xff\xfe", "field 2 is not valid UTF-8 at byte 2"),
    ],
)
def test_malformed_bytes_name_the_problem_and_offset(data: bytes, match: str) -> None:
    with pytest.raises(ModelFormatError, match=match):
        read_model(data, source="bad.onnx")


def _model_with_initializer(tensor: TensorProto) -> bytes:
    graph = helper.make_graph([], "g", [], [], initializer=[tensor])
    return helper.make_model(graph).SerializeToString()


def test_inconsistent_tensors_are_refused() -> None:
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[2**31, 2**31])
    with pytest.raises(ModelFormatError, match=r"'huge' declares .* elements"):
        read_model(_model_with_initializer(huge))
    short = TensorProto(name="short", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 12)
    with pytest.raises(ModelFormatError, match="'short' raw_data has 12 bytes, expected 4 x 4"):
        read_model(_model_with_initializer(short))
    few = TensorProto(name="few", data_type=TensorProto.INT64, dims=[3], int64_data=[1, 2])
    with pytest.raises(ModelFormatError, match="'few' has 2 values, expected 3"):
        read_model(_model_with_initializer(few))
    bf16 = TensorProto(name="bf", data_type=TensorProto.BFLOAT16, dims=[1], raw_data=b"\0\0")
    with pytest.raises(ModelFormatError, match=r"'bf' has unsupported data type 16 \(bfloat16\)"):
        read_model(_model_with_initializer(bf16))


def test_external_data_is_read_beside_the_model(tmp_path: Path) -> None:
    model = build_step_model(layers=1, hidden=4, features=3)
    inline = read_model(model.SerializeToString())  # before save_model moves the tensors out
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.onnx.data", size_threshold=0)  # fmt: skip
    data_file = tmp_path / "external.onnx.data"
    assert data_file.exists()
    contract = load_contract(path)  # reads the data file beside it
    assert contract.graph is not None and set(contract.external) == {"external.onnx.data"}
    for name, array in inline.initializers.items():
        np.testing.assert_array_equal(contract.graph.initializers[name], array)
    # the identity covers the data file: a changed data file is another model
    blob = bytearray(data_file.read_bytes())
    blob[-1] ^= 1
    data_file.write_bytes(bytes(blob))
    assert load_contract(path).sha256 != contract.sha256
    # bytes alone cannot be read: say so, and how to re-export with the data inside
    with pytest.raises(ModelFormatError, match=r"keeps its data in the external file "
                       r"'external.onnx.data'(.|\n)*external_data=False") as info:
        read_model(path.read_bytes(), source=str(path))
    assert "truncated" not in str(info.value)
    data_file.unlink()
    with pytest.raises(ModelFormatError, match=r"external data file .*external.onnx.data', "
                       r"which could not be read"):
        load_contract(path)


def test_load_contract_of_a_truncated_file_names_the_path(
    model_bytes: tuple[bytes, int], tmp_path: Path
) -> None:
    path = tmp_path / "half.onnx"
    path.write_bytes(model_bytes[0][: len(model_bytes[0]) // 2])
    with pytest.raises(ModelFormatError, match=r"half\.onnx"):
        load_contract(path)
