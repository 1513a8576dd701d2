"""The byte-level walk over a chunk's records: messages, their times, the other records,
and what a damaged buffer gives (everything before the damage)."""

from __future__ import annotations

import struct

from mcap.opcode import Opcode

from lstm_stream.logs.mcap_records import MESSAGE_RECORD, RECORD, message_times, messages_in


def message(cid: int, log_time: int, data: bytes, publish: int = 7) -> bytes:
    return MESSAGE_RECORD.pack(Opcode.MESSAGE, 22 + len(data), cid, 0, log_time, publish) + data


def record(opcode: int, body: bytes) -> bytes:
    return RECORD.pack(opcode, len(body)) + body


def test_messages_and_other_records_of_a_buffer() -> None:
    channel = record(Opcode.CHANNEL, b"channel body")
    short = record(Opcode.MESSAGE, b"\x01\x00short")  # a message record without a header
    buf = (channel + message(1, 50, b"a") + short + message(2, 20, b"") + message(1, 90, b"xyz")
           + record(Opcode.SCHEMA, b"s"))
    assert list(messages_in(buf)) == [(1, 50, 7, b"a"), (2, 20, 7, b""), (1, 90, 7, b"xyz")]
    counts, lo, hi, ordered, others = message_times(buf)
    assert (counts, lo, hi, ordered) == ({1: 2, 2: 1}, 20, 90, False)  # 50, then 20
    assert message_times(message(1, 5, b"") + message(2, 5, b"") + message(1, 6, b""))[3]
    assert [(op, bytes(body)) for op, body in others] == [(Opcode.CHANNEL, b"channel body"),
                                                          (Opcode.SCHEMA, b"s")]


def test_a_buffer_cut_inside_a_record_gives_what_comes_before() -> None:
    whole = message(1, 10, b"first") + message(1, 11, b"second")
    for cut in range(len(whole)):
        buf = whole[:cut]
        got = list(messages_in(buf))
        expected = [(1, 10, 7, b"first")] if cut >= len(message(1, 10, b"first")) else []
        assert got == expected, cut
        counts, lo, hi, _, _ = message_times(buf)
        assert (counts, lo, hi) == (({1: 1}, 10, 10) if expected else ({}, 1 << 64, 0)), cut


def test_a_record_that_claims_more_than_the_buffer_ends_the_walk() -> None:
    buf = message(1, 10, b"ok") + struct.pack("<BQ", Opcode.MESSAGE, 1 << 40) + b"\x00" * 40
    assert list(messages_in(buf)) == [(1, 10, 7, b"ok")]
    assert message_times(buf)[0] == {1: 1}
