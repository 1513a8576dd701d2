"""LogWriter writes, byte for byte, the file the official mcap writer writes for the same
calls (with the options LogWriter fixes), and the official reader's indexed read of it
gives every message back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

from lstm_stream.logs import format as fmt
from lstm_stream.logs.writer import LogWriter

T0 = 1_700_000_000_000_000_000
META = {"kind": "synthetic", "model": "m.onnx"}

# A call on the writer: a message (topic, data, log time, publish time or None), a
# flush, or a channel registered up front with its own encoding, metadata and schema.
messages = st.tuples(st.just("message"), st.sampled_from(["sensors", "controls", "policy"]),
                     st.binary(max_size=120), st.integers(0, 5_000_000_000),
                     st.one_of(st.none(), st.integers(0, 1 << 63)))
flushes = st.tuples(st.just("flush"))
channels = st.tuples(st.just("channel"), st.sampled_from(["camera", "odom", "sensors"]),
                     st.sampled_from(["ros2msg", "msgpack"]),
                     st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
                     st.one_of(st.none(), st.tuples(st.just("pkg/msg/T"), st.just("ros2msg"),
                                                    st.binary(max_size=30))))
calls = st.lists(st.one_of(messages, messages, messages, messages, flushes, channels),
                 max_size=400)


def official(path: Path, ops: list[tuple[Any, ...]], chunk_bytes: int) -> bytes:
    with open(path, "wb") as f:
        writer = Writer(f, chunk_size=chunk_bytes, compression=CompressionType.ZSTD)
        writer.start(profile=fmt.PROFILE, library=fmt.LIBRARY)
        writer.add_metadata(fmt.METADATA_NAME,
                            fmt.string_metadata({fmt.WRITER: fmt.LIBRARY, **META}))
        ids: dict[str, int] = {}
        count = 0
        for op in ops:
            if op[0] == "channel" and op[1] not in ids:
                schema = writer.register_schema(*op[4]) if op[4] is not None else 0
                ids[op[1]] = writer.register_channel(op[1], op[2], schema, op[3])
            elif op[0] == "flush":
                writer.flush()
            elif op[0] == "message":
                _, topic, data, dt, publish = op
                if topic not in ids:
                    ids[topic] = writer.register_channel(topic, fmt.MESSAGE_ENCODING, 0, {})
                stamp = fmt.publish_time(data, T0 + dt) if publish is None else publish
                writer.add_message(ids[topic], T0 + dt, data, stamp, count)
                count += 1
        writer.finish()
    return path.read_bytes()


def ours(path: Path, ops: list[tuple[Any, ...]], chunk_bytes: int) -> bytes:
    with LogWriter(path, metadata=META, chunk_bytes=chunk_bytes) as writer:
        for op in ops:
            if op[0] == "channel":
                writer.channel(op[1], op[2], op[3], op[4])
            elif op[0] == "flush":
                writer.flush()
            else:
                _, topic, data, dt, publish = op
                writer.write(topic, data, T0 + dt, publish)
    return path.read_bytes()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=calls, chunk_bytes=st.sampled_from([1, 300, 4000, fmt.CHUNK_BYTES]))
def test_the_file_equals_the_official_writers_byte_for_byte(
        tmp_path: Path, ops: list[tuple[Any, ...]], chunk_bytes: int) -> None:
    assert ours(tmp_path / "ours.mcap", ops, chunk_bytes) == official(
        tmp_path / "official.mcap", ops, chunk_bytes)


def test_an_empty_log_equals_the_official_writers(tmp_path: Path) -> None:
    assert ours(tmp_path / "a.mcap", [], fmt.CHUNK_BYTES) == official(
        tmp_path / "b.mcap", [], fmt.CHUNK_BYTES)
    assert ours(tmp_path / "a.mcap", [("channel", "odom", "ros2msg", {}, None), ("flush",)],
                300) == official(tmp_path / "b.mcap", [("channel", "odom", "ros2msg", {}, None),
                                                      ("flush",)], 300)


@pytest.mark.filterwarnings("ignore:start_time is deprecated")
def test_the_official_indexed_reader_finds_every_message(tmp_path: Path) -> None:
    written = [("sensors" if i % 3 else "controls", bytes([i % 256]) * (i % 50), i * 997 % 10_000)
               for i in range(3000)]
    path = tmp_path / "indexed.mcap"
    with LogWriter(path, chunk_bytes=5000) as writer:
        for topic, data, dt in written:
            writer.write(topic, data, T0 + dt, T0)
    with open(path, "rb") as f:
        reader = make_reader(f)  # seeking: chunk indexes, then each chunk's message indexes
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        assert summary.statistics.message_count == 3000
        assert summary.statistics.chunk_count == len(summary.chunk_indexes) > 10
        got = [(ch.topic, m.data, m.log_time - T0) for _, ch, m in
               reader.iter_messages(log_time_order=False)]
        late = [(ch.topic, m.data) for _, ch, m in
                reader.iter_messages(topics=["controls"], start_time=T0 + 9000)]
    assert sorted(got) == sorted(written)
    assert sorted(late) == sorted((t, d) for t, d, dt in written
                                  if t == "controls" and dt >= 9000)
