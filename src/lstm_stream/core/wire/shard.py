"""Sharding streams across several runner processes behind one vehicle-stack endpoint.

A farm of simulated vehicles can keep more than one core busy. Every runner
connects to the same sensor endpoint and subscribes only to its own shard's
topic; the vehicle stack publishes each message on the topic of the shard its
stream belongs to. ZeroMQ filters by topic at the publisher, so a runner never
even receives (let alone decodes) another shard's messages.

The shard of a stream is ``crc32(utf-8 stream name) % count``: stable across
processes, machines and languages (Python's own ``hash`` of a string is salted
per process and must not be used). Its topic is ``"{base}/{index}/{count}"``.
Each runner also checks the shard of every stream it is sent, so a publisher
that shards differently gets ``wrong_shard`` rejections instead of a stream's
state silently split across two runners.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


def shard_of(stream: str, count: int) -> int:
    """The shard (0 .. count-1) that serves ``stream``."""
    return zlib.crc32(stream.encode()) % count


def shard_topic(base: str, index: int, count: int) -> str:
    """The topic the runner of shard ``index`` of ``count`` subscribes to."""
    return f"{base}/{index}/{count}"


def topic_for(base: str, stream: str, count: int) -> str:
    """The topic a vehicle stack publishes ``stream``'s messages on."""
    return shard_topic(base, shard_of(stream, count), count)


@dataclass(frozen=True, slots=True)
class Shard:
    """The part of the streams one runner serves."""

    index: int
    count: int

    def owns(self, stream: str) -> bool:
        return zlib.crc32(stream.encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
