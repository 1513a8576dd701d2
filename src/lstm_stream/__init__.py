"""lstm-stream: streaming, stateful LSTM inference over ZeroMQ.

The runtime (everything importable from this package except ``backends.torch``)
depends only on numpy, onnxruntime, pyzmq and msgpack; it never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "__version__"]
