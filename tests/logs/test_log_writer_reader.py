"""LogWriter -> LogReader round trips on real MCAP files, the official mcap reader on the
same files, ordering guarantees, and damaged files (truncated, corrupt, not MCAP)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcap.reader import make_reader

from lstm_stream.core.errors import LogError
from lstm_stream.logs.reader import LogReader, read_log
from lstm_stream.logs.writer import LogWriter

from helpers.logs import T0, write_drive


def test_round_trip_keeps_bytes_topics_times_and_order(tmp_path: Path) -> None:
    path = write_drive(tmp_path / "drive.mcap", streams=2, steps=30, chunk_bytes=2000)
    reader = read_log(path)
    msgs = list(reader.messages())
    assert reader.complete and not reader.problems
    assert reader.topics() == ["controls", "sensors"]
    assert reader.topic_counts() == {"sensors": 60, "controls": 60}
    assert [m.sequence for m in msgs] == list(range(120))
    assert [m.log_time_ns for m in msgs] == sorted(m.log_time_ns for m in msgs)
    first = msgpack.unpackb(msgs[0].data)
    assert msgs[0].topic == "sensors" and first["seq"] == 0 and first["stream"] == "car0"
    assert msgs[0].publish_time_ns == first["stamp_ns"]  # publish time = stamp_ns
    control = msgs[1]
    assert control.topic == "controls" and control.publish_time_ns == control.log_time_ns
    assert reader.metadata["lstm_stream"]["kind"] == "synthetic"


def test_topic_and_time_filters(tmp_path: Path) -> None:
    path = write_drive(tmp_path / "drive.mcap", streams=1, steps=20, period_ns=1000_000)
    reader = LogReader(path)
    sensors = list(reader.messages(["sensors"], start_ns=T0 + 5_000_000, end_ns=T0 + 10_000_000))
    assert [msgpack.unpackb(m.data)["seq"] for m in sensors] == [5, 6, 7, 8, 9]
    assert {m.topic for m in sensors} == {"sensors"}


def test_the_official_mcap_reader_reads_our_files(tmp_path: Path) -> None:
    path = write_drive(tmp_path / "drive.mcap", chunk_bytes=1500)
    ours = [(m.topic, m.log_time_ns, m.data) for m in LogReader(path).messages()]
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        assert summary.statistics.message_count == len(ours)
        theirs = [(ch.topic, m.log_time, m.data) for _, ch, m in
                  reader.iter_messages(log_time_order=True)]
        assert {ch.message_encoding for ch in summary.channels.values()} == {"msgpack"}
    assert theirs == ours


def test_same_time_messages_keep_recorded_order_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "ties.mcap"
    with LogWriter(path, chunk_bytes=64) as w:  # a chunk every message or two
        for i in range(40):
            w.write(f"t{i % 3}", msgpack.packb({"i": i}), T0 + (i // 10))
    got = [msgpack.unpackb(m.data)["i"] for m in LogReader(path).messages()]
    assert got == list(range(40))


def test_messages_written_out_of_time_order_come_back_sorted_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "unordered.mcap"
    times = [50, 10, 30, 10, 20, 50, 0, 30]
    with LogWriter(path, chunk_bytes=80) as w:
        for i, t in enumerate(times):
            w.write("a", msgpack.packb({"i": i}), T0 + t)
    got = [(m.log_time_ns - T0, msgpack.unpackb(m.data)["i"]) for m in LogReader(path).messages()]
    assert got == sorted(((t, i) for i, t in enumerate(times)))


def test_a_later_chunk_that_starts_where_an_earlier_one_ends_is_merged(tmp_path: Path) -> None:
    # The second chunk (in the file) holds times 0..10, the first 10..20: both have a
    # message at 10, and the first chunk's comes first (file order breaks ties).
    path = tmp_path / "touching.mcap"
    times = [10, 15, 20, 0, 5, 10]
    with LogWriter(path) as w:
        for i, t in enumerate(times):
            w.write("a", msgpack.packb({"i": i}), T0 + t)
            if i == 2:
                w.flush()
    got = [msgpack.unpackb(m.data)["i"] for m in LogReader(path).messages()]
    assert got == [3, 4, 0, 5, 1, 2]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.integers(0, 30), max_size=60), chunk_bytes=st.sampled_from([1, 60, 400]),
       ordered=st.booleans())
def test_messages_come_in_log_time_order_then_file_order(
        tmp_path: Path, times: list[int], chunk_bytes: int, ordered: bool) -> None:
    times = sorted(times) if ordered else times  # ordered: chunks read one after another
    path = tmp_path / "any.mcap"
    with LogWriter(path, chunk_bytes=chunk_bytes) as w:
        for i, t in enumerate(times):
            w.write("a", msgpack.packb(i), T0 + t)
    got = [(m.log_time_ns - T0, msgpack.unpackb(m.data)) for m in LogReader(path).messages()]
    assert got == sorted((t, i) for i, t in enumerate(times))


def test_truncated_file_reads_every_complete_chunk_and_names_the_offset(tmp_path: Path) -> None:
    path = write_drive(tmp_path / "drive.mcap", streams=1, steps=200, chunk_bytes=2000)
    full = [m.data for m in LogReader(path).messages()]
    data = path.read_bytes()
    for cut in (len(data) // 4, len(data) // 2):
        short = tmp_path / f"cut{cut}.mcap"
        short.write_bytes(data[:cut])
        reader = LogReader(short)
        got = [m.data for m in reader.messages()]
        assert not reader.complete
        assert got == full[:len(got)] and len(got) > 0  # a prefix: nothing reordered or invented
        assert reader.problems and "offset" in str(reader.problems[0])
        assert reader.problems[0].offset <= cut
    no_footer = tmp_path / "no_footer.mcap"  # killed while writing the summary: data intact
    no_footer.write_bytes(data[:-20])
    assert [m.data for m in LogReader(no_footer).messages()] == full


def test_corrupt_chunk_is_skipped_and_the_rest_is_read(tmp_path: Path) -> None:
    path = write_drive(tmp_path / "drive.mcap", streams=1, steps=300, chunk_bytes=3000,
                       targets=False)
    good = LogReader(path)
    seqs = [msgpack.unpackb(m.data)["seq"] for m in good.messages()]
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and len(summary.chunk_indexes) > 3
    second = summary.chunk_indexes[1].chunk_start_offset
    data = bytearray(path.read_bytes())
    for i in range(second + 80, second + 120):  # inside the compressed records
        data[i] ^= 0xFF
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    reader = LogReader(bad)
    got = [msgpack.unpackb(m.data)["seq"] for m in reader.messages()]
    assert reader.problems and "chunk" in reader.problems[0].detail
    assert reader.problems[0].offset == second
    assert len(got) < len(seqs) and got[0] == 0 and got[-1] == seqs[-1]  # later chunks survive


@pytest.mark.parametrize(("content", "match"), [
    (b"", "is empty"),
    (b"this is not an mcap file at all", "not an MCAP file"),
])
def test_not_a_log_is_a_clear_error(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.mcap"
    path.write_bytes(content)
    with pytest.raises(LogError, match=match) as err:
        LogReader(path)
    assert str(path) in str(err.value)


def test_missing_file_and_missing_topic(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="does not exist"):
        LogReader(tmp_path / "nope.mcap")
    reader = LogReader(write_drive(tmp_path / "drive.mcap", targets=False))
    with pytest.raises(LogError, match=r"no messages on topic\(s\) controls; it has: sensors"):
        reader.require_topics(["controls"])
