"""The expert driver: a privileged lane-keeping controller, and the exploration noise.

The expert sees the exact lateral offset, heading error and road curvature
(:class:`~lstm_stream.sim.env.Truth`), which the policy never does. It steers
highway-env's kinematic bicycle (slip angle ``beta = atan(tan(delta) / 2)``,
yaw rate ``2 v sin(beta) / L``) with

    beta_ff = asin(kappa L / 2)                       the slip a bend of curvature kappa needs
    beta    = beta_ff - k_heading (e_psi + beta_ff) - k_lateral e_y
    delta   = atan(2 tan(beta))                       the steering angle that gives beta

``e_psi + beta_ff`` is the error of the direction of travel (the car's heading
lags the lane by ``beta_ff`` in a steady bend), so the car settles on the lane
centre in bends too.

For training data the *applied* command is the expert's plus exploration noise
(an Ornstein-Uhlenbeck process), so the logs show the car off the centre line
and the expert's way back; the *recorded* command is always the expert's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lstm_stream.sim.env import WHEELBASE_M, Truth


@dataclass(frozen=True)
class ExpertController:
    """Steering from the exact state; gains tuned on the race track at 10 Hz."""

    k_heading: float = 0.8
    k_lateral: float = 0.2  # per metre
    steer_limit_rad: float = math.pi / 4

    def steer(self, truth: Truth) -> float:
        """The steering angle in rad, + to the left."""
        beta_ff = math.asin(max(-1.0, min(1.0, truth.curvature_per_m * WHEELBASE_M / 2)))
        beta = (beta_ff - self.k_heading * (truth.heading_error_rad + beta_ff)
                - self.k_lateral * truth.lateral_m)
        beta = max(-1.2, min(1.2, beta))
        delta = math.atan(2 * math.tan(beta))
        return max(-self.steer_limit_rad, min(self.steer_limit_rad, delta))


class ExplorationNoise:
    """Ornstein-Uhlenbeck noise added to the applied steering while recording.

    ``x_{k+1} = x_k - theta x_k + sigma sqrt(2 theta) n_k``: stationary std
    ``sigma``, correlation time ``1 / theta`` ticks; seeded per episode.
    """

    def __init__(self, seed: int, sigma_rad: float = 0.1, theta: float = 0.15) -> None:
        self.rng = np.random.default_rng([seed, 2])
        self.sigma = sigma_rad
        self.theta = theta
        self.value = 0.0

    def sample(self) -> float:
        self.value += (-self.theta * self.value
                       + self.sigma * math.sqrt(2 * self.theta) * float(self.rng.normal()))
        return self.value
