"""Closed-loop driving in a real simulator: the vehicle-stack side of the lane-keeping demo.

Needs the ``[sim]`` extra (highway-env on Gymnasium). Nothing here is imported
by the runtime (``serve``, ``demo``): highway-env and gymnasium are imported
only when a :class:`~lstm_stream.sim.env.LaneKeepingSim` is created.

- ``env.py``: the simulator (highway-env ``racetrack-v1``), the task and its
  partial, noisy sensor model.
- ``expert.py``: the privileged expert controller that produced the training data.
- ``loop.py``: one episode in closed loop: sensor message out, policy output
  back within a deadline, command applied, simulator stepped; and recording.
- ``report.py``: per-episode metrics, the expert / carried / reset table, JSON, PNG.

docs/driving.md describes the task and how to reproduce every figure.
"""

from __future__ import annotations

from lstm_stream.core.errors import LstmStreamError


class SimError(LstmStreamError):
    """The simulator could not be created or run, or a closed-loop run failed."""


__all__ = ["SimError"]
