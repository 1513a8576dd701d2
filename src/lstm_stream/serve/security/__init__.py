"""Authentication and encryption of the runner's sockets with ZeroMQ CURVE.

``curve.py`` holds the key handling and socket set-up for both sides (the
runner as CURVE server with an allow-list of client public keys, and clients);
``cli/keys.py`` adds ``lstm-stream keys``. Deployment: docs/security.md.
"""

from __future__ import annotations

from lstm_stream.serve.security.curve import (
    ClientKeys,
    ServerKeys,
    generate_keys,
    load_server_keys,
)

__all__ = ["ClientKeys", "ServerKeys", "generate_keys", "load_server_keys"]
