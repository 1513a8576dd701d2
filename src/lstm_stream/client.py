"""Small clients for the runner's sockets: the control socket, and the output topics.

Used by the CLI (``lstm-stream control``), by tests and by Python vehicle stacks.
"""

from __future__ import annotations

from typing import Any

import msgpack
import zmq

from lstm_stream.errors import LstmStreamError


class ControlError(LstmStreamError):
    """The runner did not answer a control request, or answered with an error."""


def control_request(endpoint: str, request: dict[str, Any], *, timeout_s: float = 2.0,
                    context: zmq.Context[Any] | None = None) -> dict[str, Any]:
    """Send one request to a runner's control socket and return its reply map.

    Raises ControlError when no reply comes within ``timeout_s``. An error reply
    (``ok: false``) is returned as it is, for the caller to show.
    """
    ctx = context or zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(msgpack.packb(request, use_bin_type=True))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise ControlError(f"No reply from the runner's control socket at {endpoint!r} "
                               f"within {timeout_s:g} s. Is `lstm-stream serve` running "
                               "with that --control endpoint?")
        reply = msgpack.unpackb(sock.recv(), raw=False)
    if not isinstance(reply, dict):
        raise ControlError(f"The control socket at {endpoint!r} sent a reply that is not a map.")
    return reply
