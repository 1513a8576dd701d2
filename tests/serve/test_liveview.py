"""serve --foxglove: a client speaking the Foxglove WebSocket protocol connects to a
live serve, gets the advertised channels, subscribes, and receives messages of each.

The client offers both subprotocol names: the official foxglove-sdk (every release
from 0.5.0 to 0.30.3; tools/foxglove_subprotocols.py) accepts only
``foxglove.sdk.v1``, the successor of ``foxglove.websocket.v1`` with the same
operations (serverInfo, advertise, subscribe, binary message data), and refuses
the older name with HTTP 400."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from lstm_stream.core.wire.protocol import encode_sensor
from lstm_stream.procs import free_port
from lstm_stream.serve.client import control_request

from helpers.support import REPO, VehicleStack, serve_process

pytest.importorskip("foxglove", reason="needs the [viz] extra")
websockets = pytest.importorskip("websockets", reason="needs websockets (the [dev] extra)")
from websockets.sync.client import connect  # noqa: E402

MODEL = REPO / "models" / "random_lstm.onnx"
WANTED = {"sensors", "policy", "diagnostics", "health"}


@pytest.fixture
def stack(ctx: zmq.Context[Any]) -> Iterator[VehicleStack]:
    vs = VehicleStack(ctx)
    yield vs
    vs.close()


def test_a_foxglove_client_sees_inputs_outputs_diagnostics_and_health(
        stack: VehicleStack) -> None:
    port = free_port()
    with serve_process(MODEL, stack.sensors_endpoint, "--foxglove", str(port),
                       "--set", "health.rate_hz=10", "--set", "viz.max_rate_hz=0") as served:
        stack.wait_subscribed()
        stack.connect_outputs(served.output, served.control)
        x = np.zeros(16, np.float32)
        for seq in range(3):
            stack.send(encode_sensor(seq, x, stream="car1"))
        stack.send(b"\xc1", topic=b"sensors")  # a rejection: something on diagnostics
        stack.receive(4)
        with connect(f"ws://127.0.0.1:{port}", open_timeout=10,
                     subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"]) as ws:
            assert ws.subprotocol == "foxglove.sdk.v1"
            channels: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 10
            while set(channels) < WANTED and time.monotonic() < deadline:
                frame = ws.recv(timeout=5)
                if isinstance(frame, str):
                    body = json.loads(frame)
                    if body["op"] == "advertise":
                        channels.update({c["topic"]: c for c in body["channels"]})
            assert set(channels) >= WANTED, sorted(channels)
            assert channels["policy"]["encoding"] == "json"
            assert channels["policy"]["schemaEncoding"] == "jsonschema"
            ids = {channels[t]["id"]: t for t in WANTED}
            ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                {"id": k, "channelId": cid} for k, cid in enumerate(ids)]}))
            by_subscription = dict(enumerate(ids.values()))
            for seq in range(3, 40):
                stack.send(encode_sensor(seq, x, stream="car1"))
                time.sleep(0.01)
            stack.send(b"\xc1", topic=b"sensors")
            got: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 10
            while set(got) < WANTED and time.monotonic() < deadline:
                frame = ws.recv(timeout=5)
                if isinstance(frame, bytes) and frame[0] == 1:  # message data
                    (sub,) = struct.unpack_from("<I", frame, 1)
                    got[by_subscription[sub]] = json.loads(frame[13:])
            assert set(got) >= WANTED, sorted(got)
        assert set(got["policy"]["outputs"]) == {"steer", "accel"}
        assert len(got["sensors"]["x"]) == 16 and got["diagnostics"]["event"] == "rejected"
        assert "streams" in got["health"] and "steps_per_s" in got["health"]
        status = control_request(served.control, {"cmd": "status"})
        assert status["foxglove"]["port"] == port and status["foxglove"]["published"] > 40
        assert status["foxglove"]["dropped"] == 0


def test_the_probe_tool_reports_what_the_installed_sdk_accepts() -> None:
    # docs/sources.md quotes tools/foxglove_subprotocols.py; this keeps it true for the
    # installed SDK: a client offering only the older name is refused, the new one served
    import foxglove

    from helpers.tools import load_tool

    probe = load_tool("foxglove_subprotocols").probe
    port = free_port()
    server = foxglove.start_server(host="127.0.0.1", port=port)
    try:
        assert probe(port, "foxglove.websocket.v1").startswith("refused (")
        assert probe(port, "foxglove.sdk.v1") == (
            "accepted, chose foxglove.sdk.v1, first op 'serverInfo'")
    finally:
        server.stop()
