"""A minimal reader of the ONNX protobuf format, with numpy as its only dependency.

It reads what the model contract and the numpy/torch backends need (the
graph's inputs, outputs, initializers, nodes, opsets and metadata) straight
from the protobuf wire format, so that serving a model needs neither the
``onnx`` package nor protobuf. Field numbers are those of ``onnx/onnx.proto``.

Every malformed input raises :class:`~lstm_stream.core.errors.ModelFormatError`
naming the source and the byte offset. The reader never recurses on data it
reads (sub-graphs of control-flow attributes are kept as their raw bytes and
nested ``TypeProto`` values are not descended into), so its stack depth is
bounded by the schema, and every loop advances by at least one byte.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn, TypeVar

import numpy as np

from lstm_stream.core.errors import ModelFormatError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_WIRE_NAMES = {VARINT: "varint", FIXED64: "fixed64", LEN: "length-delimited", FIXED32: "fixed32"}

# TensorProto.DataType -> numpy dtype (little-endian, as raw_data is stored).
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("i1"), 4: np.dtype("<u2"),
    5: np.dtype("<i2"), 6: np.dtype("<i4"), 7: np.dtype("<i8"), 9: np.dtype("?"),
    10: np.dtype("<f2"), 11: np.dtype("<f8"), 12: np.dtype("<u4"), 13: np.dtype("<u8"),
    14: np.dtype("<c8"), 15: np.dtype("<c16"),
}  # fmt: skip
STRING, FLOAT16, COMPLEX64, COMPLEX128 = 8, 10, 14, 15
EXTERNAL = 1  # TensorProto.DataLocation
T = TypeVar("T")

# TensorProto.DataType -> the name users know it by (0: not a tensor type).
ELEMENT_TYPE_NAMES = {
    0: "not a tensor", 1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16",
    6: "int32", 7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "float64",
    12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
}  # fmt: skip

# How a tensor's external data file is read: its ``location`` -> the file's bytes.
ExternalLoader = Callable[[str], bytes]


def type_name(elem_type: int) -> str:
    """``float16`` for 10: the name of an ONNX element type, for messages."""
    return ELEMENT_TYPE_NAMES.get(elem_type, f"element type {elem_type}")


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: name, element type and declared shape."""

    name: str
    elem_type: int  # TensorProto.DataType, 1 = float; 0 for non-tensor types
    dims: tuple[int | str | None, ...]  # int fixed, str symbolic, None unknown; () no shape


@dataclass(frozen=True)
class Node:
    """One operator application in the graph."""

    op_type: str
    name: str
    domain: str
    inputs: tuple[str, ...]  # '' for an omitted optional input
    outputs: tuple[str, ...]
    attributes: dict[str, Any]  # GRAPH attributes are kept as the sub-graph's raw bytes


@dataclass(frozen=True)
class OnnxModel:
    """The parts of an ONNX ``ModelProto`` that lstm-stream uses."""

    ir_version: int
    producer_name: str
    producer_version: str
    opset: dict[str, int]  # domain ('' = ai.onnx) -> version
    inputs: tuple[ValueInfo, ...]  # graph inputs that are not initializers
    outputs: tuple[ValueInfo, ...]
    initializers: dict[str, np.ndarray]
    nodes: tuple[Node, ...]  # in graph (topological) order
    metadata: dict[str, str]


class _Field(NamedTuple):
    number: int
    wire: int
    value: int  # the varint / fixed integer; for LEN, the payload length
    start: int  # payload byte range in the model data
    end: int


Fields = dict[int, list[_Field]]  # a message's fields by field number, in order


class _Reader:
    """Walks protobuf fields over one buffer; every offset is absolute in that buffer."""

    def __init__(self, data: bytes, source: str, external: ExternalLoader | None = None) -> None:
        self.data = data
        self.source = source
        self.external = external

    def fail(self, what: str, offset: int) -> NoReturn:
        raise ModelFormatError(
            f"Could not read ONNX model {self.source!r}: {what} at byte {offset}. "
            "The file is truncated or not an ONNX model; re-export or re-download it."
        )

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        start = pos
        while True:
            if pos >= end:
                self.fail("truncated varint", start)
            byte = self.data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                self.fail("varint longer than 10 bytes", start)

    def fields(self, start: int, end: int) -> Iterator[_Field]:
        pos = start
        while pos < end:
            key_at = pos
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                self.fail("field number 0", key_at)
            if wire == VARINT:
                value, after = self.varint(pos, end)
                yield _Field(number, wire, value, pos, after)
            elif wire in (FIXED32, FIXED64):
                size = 4 if wire == FIXED32 else 8
                if pos + size > end:
                    self.fail(f"truncated {_WIRE_NAMES[wire]} field {number}", pos)
                value = int.from_bytes(self.data[pos : pos + size], "little")
                after = pos + size
                yield _Field(number, wire, value, pos, after)
            elif wire == LEN:
                length, pos = self.varint(pos, end)
                after = pos + length
                if after > end:
                    self.fail(f"field {number} claims {length} bytes, past the end ({end})", pos)
                yield _Field(number, wire, length, pos, after)
            else:
                self.fail(f"unsupported wire type {wire} in field {number}", key_at)
            pos = after

    def expect(self, f: _Field, wire: int) -> None:
        if f.wire != wire:
            self.fail(
                f"field {f.number} is {_WIRE_NAMES.get(f.wire, f.wire)}, "
                f"expected {_WIRE_NAMES[wire]}",
                f.start,
            )

    def int64(self, f: _Field) -> int:
        self.expect(f, VARINT)
        return f.value - (1 << 64) if f.value >= 1 << 63 else f.value

    def bytes_(self, f: _Field) -> bytes:
        self.expect(f, LEN)
        return self.data[f.start : f.end]

    def string(self, f: _Field) -> str:
        try:
            return self.bytes_(f).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"field {f.number} is not valid UTF-8", f.start)

    def float32(self, f: _Field) -> float:
        self.expect(f, FIXED32)
        return float(struct.unpack("<f", self.data[f.start : f.end])[0])

    def varints(self, f: _Field) -> list[int]:
        """A repeated integer field, packed or not; signed 64-bit."""
        if f.wire != LEN:
            return [self.int64(f)]
        values, pos = [], f.start
        while pos < f.end:
            value, pos = self.varint(pos, f.end)
            values.append(value - (1 << 64) if value >= 1 << 63 else value)
        return values

    def fixed(self, f: _Field, dtype: str) -> np.ndarray:
        """A repeated float/double field, packed or not."""
        size = np.dtype(dtype).itemsize
        if f.wire != LEN:
            self.expect(f, FIXED32 if size == 4 else FIXED64)
        if (f.end - f.start) % size:
            self.fail(f"packed field {f.number} is not a multiple of {size} bytes", f.start)
        return np.frombuffer(
            self.data, dtype=dtype, count=(f.end - f.start) // size, offset=f.start
        )

    def len_field(self, f: _Field) -> _Field:
        self.expect(f, LEN)
        return f

    def message(self, f: _Field | None = None) -> Fields:
        """The fields of an embedded message (of the whole buffer if ``f`` is None) by number."""
        if f is not None:
            self.expect(f, LEN)
        fields: Fields = {}
        for g in self.fields(0, len(self.data)) if f is None else self.fields(f.start, f.end):
            fields.setdefault(g.number, []).append(g)
        return fields

    def last(self, m: Fields, number: int, read: Callable[[_Field], T], default: T) -> T:
        """A singular field: as in protobuf, the last occurrence wins."""
        found = m.get(number)
        return read(found[-1]) if found else default

    def pairs(self, f: _Field) -> tuple[str, str]:
        """A StringStringEntryProto (metadata_props)."""
        m = self.message(f)
        return self.last(m, 1, self.string, ""), self.last(m, 2, self.string, "")


def read_model(data: bytes, *, source: str = "<bytes>",
               external: ExternalLoader | None = None) -> OnnxModel:
    """Parse a serialized ONNX ``ModelProto``.

    Tensors kept in external data files (torch's dynamo exporter writes
    ``model.onnx.data``) are read through ``external``, which maps a tensor's
    ``location`` to that file's bytes; without it such a model is refused.
    """
    r = _Reader(bytes(data), source, external)
    m = r.message()
    ir_version = r.last(m, 1, r.int64, 0)
    producer_name = r.last(m, 2, r.string, "")
    producer_version = r.last(m, 3, r.string, "")
    if 7 not in m:
        r.fail("no graph (ModelProto field 7) found", len(r.data))
    g = r.message(m[7][-1])
    if 15 in g:
        r.fail("sparse initializers are not supported", g[15][0].start)
    opset: dict[str, int] = {}
    for f in m.get(8, []):
        op = r.message(f)
        domain = r.last(op, 1, r.string, "")
        opset["" if domain == "ai.onnx" else domain] = r.last(op, 2, r.int64, 0)
    initializers = dict(_read_tensor(r, f) for f in g.get(5, []))
    inputs = [_read_value_info(r, f) for f in g.get(11, [])]
    return OnnxModel(
        ir_version=ir_version,
        producer_name=producer_name,
        producer_version=producer_version,
        opset=opset,
        inputs=tuple(vi for vi in inputs if vi.name not in initializers),
        outputs=tuple(_read_value_info(r, f) for f in g.get(12, [])),
        initializers=initializers,
        nodes=tuple(_read_node(r, f) for f in g.get(1, [])),
        metadata=dict(r.pairs(f) for f in m.get(14, [])),
    )


def _read_value_info(r: _Reader, f: _Field) -> ValueInfo:
    m = r.message(f)
    none: Fields = {}
    type_proto = r.last(m, 2, r.message, none)
    tensor = r.last(type_proto, 1, r.message, none)  # sequence/map/... types keep elem_type 0
    shape = r.last(tensor, 2, r.message, None)
    dims = () if shape is None else tuple(_read_dim(r, d) for d in shape.get(1, []))
    return ValueInfo(r.last(m, 1, r.string, ""), r.last(tensor, 1, r.int64, 0), dims)


def _read_dim(r: _Reader, f: _Field) -> int | str | None:
    dim = r.message(f)  # a oneof: dim_value = 1, dim_param = 2, or neither
    return r.last(dim, 1, r.int64, None) if 1 in dim else r.last(dim, 2, r.string, None)


def _read_node(r: _Reader, f: _Field) -> Node:
    m = r.message(f)
    return Node(
        op_type=r.last(m, 4, r.string, ""),
        name=r.last(m, 3, r.string, ""),
        domain=r.last(m, 7, r.string, ""),
        inputs=tuple(r.string(g) for g in m.get(1, [])),
        outputs=tuple(r.string(g) for g in m.get(2, [])),
        attributes=dict(_read_attribute(r, g) for g in m.get(5, [])),
    )


# AttributeProto.AttributeType -> the field that holds its value.
_ATTR_FIELDS = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8, 8: 9, 9: 10, 10: 11}


def _read_attribute(r: _Reader, f: _Field) -> tuple[str, Any]:
    m = r.message(f)
    kind = r.last(m, 20, r.int64, 0)
    if kind == 0:  # written before the type field existed: infer it from the data
        kind = next((k for k, n in _ATTR_FIELDS.items() if n in m), 0)
    found = m.get(_ATTR_FIELDS.get(kind, 0), [])
    # FLOAT, INT, STRING, TENSOR, GRAPH; their list forms are kinds 8, 9, 10 (and 6, 7).
    single: dict[int, Callable[[_Field], Any]] = {
        1: r.float32, 2: r.int64, 3: r.string, 4: lambda g: _read_tensor(r, g)[1], 5: r.bytes_,
    }  # fmt: skip
    value: Any = None  # sparse tensors and type protos: nothing here uses them
    if kind in single:
        value = single[kind](found[-1]) if found else {1: 0.0, 2: 0, 3: ""}.get(kind)
    elif kind == 6:
        value = [float(v) for g in found for v in r.fixed(g, "<f4")]
    elif kind == 7:
        value = [v for g in found for v in r.varints(g)]
    elif kind in (8, 9, 10):  # STRINGS, TENSORS, GRAPHS read like STRING, TENSOR, GRAPH
        value = [single[kind - 5](g) for g in found]
    return r.last(m, 1, r.string, ""), value


def _read_tensor(r: _Reader, f: _Field) -> tuple[str, np.ndarray]:
    m = r.message(f)
    name = r.last(m, 8, r.string, "")
    dims = [v for g in m.get(1, []) for v in r.varints(g)]
    data_type = r.last(m, 2, r.int64, 0)
    if 13 in m or any(r.int64(g) == EXTERNAL for g in m.get(14, [])):
        return name, _external_tensor(r, m, name, dims, data_type)
    if any(d < 0 for d in dims):
        r.fail(f"tensor {name!r} has a negative dimension {dims}", f.start)
    count = math.prod(dims)
    if count > len(r.data):  # every element takes at least one byte, whatever the encoding
        r.fail(f"tensor {name!r} declares {count} elements, more than the file holds", f.start)
    raw = r.last(m, 9, r.len_field, None)
    if data_type == STRING:
        strings = [r.bytes_(g).decode("utf-8", "replace") for g in m.get(6, [])]
        array: np.ndarray = np.array(strings, dtype=object)
    elif data_type not in DTYPES:
        r.fail(f"tensor {name!r} has unsupported data type {data_type} "
               f"({type_name(data_type)})", f.start)
    elif raw is not None:
        dtype = DTYPES[data_type]
        if raw.end - raw.start != count * dtype.itemsize:
            r.fail(
                f"tensor {name!r} raw_data has {raw.end - raw.start} bytes, "
                f"expected {count} x {dtype.itemsize} for shape {dims}",
                raw.start,
            )
        array = np.frombuffer(r.data, dtype=dtype, count=count, offset=raw.start).copy()
    else:
        array = _typed_values(r, data_type, m)
    if array.size != count:
        r.fail(f"tensor {name!r} has {array.size} values, expected {count} for {dims}", f.start)
    return name, array.reshape(dims).astype(array.dtype.newbyteorder("="), copy=False)


def _external_tensor(r: _Reader, m: Fields, name: str, dims: list[int],
                     data_type: int) -> np.ndarray:
    """A tensor whose bytes are in an external data file (ONNX ``external_data``)."""
    entries = dict(r.pairs(g) for g in m.get(13, []))
    location = entries.get("location", "")
    if r.external is None:
        raise ModelFormatError(
            f"ONNX model {r.source!r}: tensor {name!r} keeps its data in the external file "
            f"{location!r}. Load the model from its path (lstm-stream reads the data files "
            "beside it), or re-export with all tensors inside the .onnx file: "
            "torch.onnx.export(..., external_data=False), or onnx.save(onnx.load(path), "
            "path, save_as_external_data=False).")
    if data_type not in DTYPES or data_type == STRING:
        r.fail(f"tensor {name!r} has unsupported data type {data_type} "
               f"({type_name(data_type)})", 0)
    dtype = DTYPES[data_type]
    count = math.prod(dims)
    blob = r.external(location)
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries.get("length", str(len(blob) - offset)))
    except ValueError:
        r.fail(f"tensor {name!r} has a non-integer external offset or length", 0)
    if offset < 0 or length != count * dtype.itemsize or offset + length > len(blob):
        raise ModelFormatError(
            f"ONNX model {r.source!r}: tensor {name!r} should be {count * dtype.itemsize} "
            f"bytes at offset {offset} of its data file {location!r} ({len(blob)} bytes), "
            "which does not hold them: the data file does not belong to this model or is "
            "truncated. Export the model and its data file again, together.")
    array = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).copy()
    return array.reshape(dims).astype(array.dtype.newbyteorder("="), copy=False)


def _typed_values(r: _Reader, data_type: int, m: Fields) -> np.ndarray:
    """Values stored in the typed fields (float_data = 4, int32_data = 5, ...) not raw_data."""
    dtype = DTYPES[data_type]
    if data_type in (1, COMPLEX64, 11, COMPLEX128):
        single = data_type in (1, COMPLEX64)
        wire_dtype, number = ("<f4", 4) if single else ("<f8", 10)
        parts = [r.fixed(g, wire_dtype) for g in m.get(number, [])]
        return np.concatenate(parts or [np.zeros(0, wire_dtype)]).view(dtype)
    number = {7: 7, 12: 11, 13: 11}.get(data_type, 5)  # int64_data, uint64_data, int32_data
    ints = [v for g in m.get(number, []) for v in r.varints(g)]
    if data_type == FLOAT16:  # float16 values are stored as their bit patterns
        return np.array([v & 0xFFFF for v in ints], dtype="<u2").view(dtype)
    if data_type == 13:
        return np.array([v & ((1 << 64) - 1) for v in ints], dtype=dtype)
    try:
        return np.array(ints, dtype=np.int64).astype(dtype)
    except OverflowError:
        r.fail(f"integer value out of range for data type {data_type}", m[number][0].start)
