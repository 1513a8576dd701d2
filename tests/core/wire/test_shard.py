"""Sharding streams by topic: the shard of a stream name and the topic it is published on.

Runners serving shards over real sockets are tested in tests/serve/test_shard_serve.py.
"""

from __future__ import annotations

import zlib

import numpy as np

from lstm_stream.core.wire.shard import Shard, shard_of, shard_topic, topic_for


def test_shard_of_is_crc32_of_the_utf8_name() -> None:
    # The definition a vehicle stack in another language must reproduce: the standard
    # CRC-32 (zlib, IEEE 802.3), whose check value for "123456789" is 0xCBF43926.
    assert shard_of("123456789", 65536) == 0xCBF43926 % 65536
    assert shard_of("trüffel", 3) == zlib.crc32("trüffel".encode()) % 3
    assert shard_of("car-7", 4) == 0
    assert topic_for("sensors", "car-7", 4) == "sensors/0/4" == shard_topic("sensors", 0, 4)
    assert Shard(0, 4).owns("car-7") and not Shard(1, 4).owns("car-7")


def test_streams_spread_over_every_shard() -> None:
    counts = np.bincount([shard_of(f"sim-{i}", 8) for i in range(8000)], minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # ~1000 each
