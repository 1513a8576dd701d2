"""Socket helpers of the serve loop: attach with a clear error, receive whole messages fast."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import zmq

from lstm_stream.core.errors import LstmStreamError


def frame_receiver(sock: zmq.Socket[Any]) -> Callable[[], list[bytes]]:
    """A function returning the next whole multipart message as bytes, without waiting
    (``zmq.Again`` when none is queued).

    It reads each frame's ``more`` flag from the frame itself: pyzmq's
    ``recv_multipart`` asks the socket (``RCVMORE``) after every frame, which
    costs more than the receive.
    """
    recv = sock.recv

    def receive() -> list[bytes]:
        frame = recv(zmq.NOBLOCK, copy=False)
        frames = [frame.bytes]
        while frame.more:  # the rest of a message is queued with its first frame
            frame = recv(copy=False)
            frames.append(frame.bytes)
        return frames

    return receive


def attach(sock: zmq.Socket[Any], endpoint: str, bind: bool, what: str) -> None:
    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as err:
        verb = "bind" if bind else "connect"
        raise LstmStreamError(
            f"Could not {verb} the {what} socket to {endpoint!r}: {err}. "
            + ("Is another process using that address? Pick another with "
               f"--{what}." if bind else "Check the endpoint.")) from err


class Subscriptions:
    """The topics subscribers of an XPUB asked for (XPUB_VERBOSER), by count."""

    def __init__(self, pub: zmq.Socket[Any]) -> None:
        self._pub = pub
        self.topics: Counter[str] = Counter()

    def read(self) -> None:
        """Take the (un)subscriptions queued on the socket (between messages)."""
        while cast(int, self._pub.get(zmq.EVENTS)) & zmq.POLLIN:
            frame = self._pub.recv()
            if frame:
                topic = frame[1:].decode(errors="replace")
                self.topics[topic] += 1 if frame[0] == 1 else -1
                if self.topics[topic] <= 0:
                    del self.topics[topic]

    def asked_by_name(self, topic: str) -> bool:
        """Whether a subscriber named ``topic`` (the empty prefix, every topic, does not
        count)."""
        return any(t and topic.startswith(t) for t in self.topics)
