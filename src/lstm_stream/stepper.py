"""One message through decode -> admit -> step -> commit: shared by serve and eval.

:class:`StreamStepper` is the logic of the hot path without sockets or clocks:
the runner calls it with the receive time of each message, and the offline
evaluator with each message's log time, so the live and offline paths cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_stream.backends import StepBackend
from lstm_stream.contract import ModelContract
from lstm_stream.protocol import STEP_FAILED, Rejection, SensorDecoder, SensorMessage
from lstm_stream.state import StateStore


@dataclass(slots=True)
class Stepped:
    """A message that was stepped: what goes into its output."""

    msg: SensorMessage
    y: np.ndarray  # (1, outputs) float32
    step: int  # steps since the stream's last reset
    reset: str | None  # why the state was reset before this step
    gap: int  # seq missed just before this one


class StreamStepper:
    """Decodes, validates and steps messages, keeping every stream's state."""

    def __init__(self, contract: ModelContract, backend: StepBackend, *,
                 max_streams: int = 1024, idle_timeout_s: float = 5.0, max_gap: int = 0,
                 max_message_bytes: int = 65536) -> None:
        self.contract = contract
        self.backend = backend
        self.store = StateStore(contract.states, max_streams=max_streams,
                                idle_timeout_s=idle_timeout_s, max_gap=max_gap)
        self.decoder = SensorDecoder(contract.n_features, contract.feature_names,
                                     max_message_bytes)

    def step(self, frames: list[bytes], now_ns: int) -> Stepped | Rejection:
        """Step one ``[topic, payload]`` message received at ``now_ns`` (monotonic or log time).

        A rejection changes no state: not the stream's arrays, not its seq.
        """
        msg = self.decoder.decode(frames)
        if type(msg) is Rejection:
            return msg
        assert not isinstance(msg, Rejection)  # for mypy; free at run time
        admission = self.store.admit(msg, now_ns)
        if type(admission) is Rejection:
            return admission
        assert not isinstance(admission, Rejection)
        try:
            y, new_states = self.backend.step(msg.x, admission.states)
        except Exception as err:  # a backend failure must not kill the caller
            return Rejection(STEP_FAILED, f"the backend failed: {err}"[:300],
                             msg.topic, msg.stream, msg.seq)
        stream = self.store.commit(admission, msg, new_states, now_ns)
        return Stepped(msg, y, stream.step, admission.reset, admission.gap)
