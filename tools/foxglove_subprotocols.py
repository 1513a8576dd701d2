"""Which WebSocket subprotocols the installed foxglove-sdk's server accepts.

    python tools/foxglove_subprotocols.py

Starts the SDK's WebSocket server on a free loopback port and connects once per
subprotocol name, offering only that name; prints, per name, the subprotocol
the server chose and the first operation it sent, or why the handshake failed.
To check other releases of the SDK, install each in a scratch venv with
``websockets`` and run this file with that venv's python (docs/sources.md).
"""

from __future__ import annotations

import importlib.metadata
import json

import foxglove
from websockets.sync.client import connect

from lstm_stream.procs import free_port

NAMES = ("foxglove.websocket.v1", "foxglove.sdk.v1")


def probe(port: int, name: str) -> str:
    """What the server answers a client that offers only ``name``."""
    try:
        with connect(f"ws://127.0.0.1:{port}", subprotocols=[name],  # type: ignore[list-item]
                     open_timeout=5) as ws:
            first = json.loads(ws.recv(timeout=5))
            return f"accepted, chose {ws.subprotocol}, first op {first.get('op', '?')!r}"
    except Exception as err:  # a refused handshake is the answer, not a failure
        return f"refused ({err})"


def main() -> None:
    port = free_port()
    server = foxglove.start_server(host="127.0.0.1", port=port)
    try:
        version = importlib.metadata.version("foxglove-sdk")
        for name in NAMES:
            print(f"foxglove-sdk {version}: offering only {name}: {probe(port, name)}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
