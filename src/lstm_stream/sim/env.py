"""The lane-keeping task on highway-env's race track, and its partial, noisy sensor.

The simulator is highway-env's ``racetrack-v1`` (Gymnasium): a closed two-lane
circuit of about 330 m with straights and bends of 15 to 25 m radius, a
kinematic bicycle car at a constant 10 m/s, steering-only continuous action,
an episode that ends when the car leaves the road. No other vehicles.

The task: keep to the lane the car starts in. Each episode starts from a seeded
random point on the first straight, with a seeded lateral offset and heading
error, so that every episode begins with a recovery.

What the policy sees (:data:`FEATURE_NAMES`) is what a cheap lane camera gives:
the lateral offset from the lane centre and the heading error to the lane, each
with white Gaussian noise, at the control rate. It is not given their rates,
nor the curvature of the road. A policy must filter the noise and infer the
bend it is in (from how the errors drift while it steers) from the history of
its inputs: that is what the LSTM's state is for. The expert
(:mod:`lstm_stream.sim.expert`) sees the exact state and the curvature.

Determinism: the track's random start comes from ``env.reset(seed=seed)``; the
initial perturbation and the sensor noise from ``numpy.random.default_rng``
streams derived from the same seed. The sensor noise of tick ``k`` is the same
whatever the car does, so two policies driven on one seed meet the same noise.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstm_stream.sim import SimError

FEATURE_NAMES = ("lateral_offset_m", "heading_error_rad")
OUTPUT_NAMES = ("steer_rad",)
WHEELBASE_M = 5.0  # highway-env's kinematic Vehicle.LENGTH: the bicycle model's length


@dataclass(frozen=True)
class SimConfig:
    """The simulated task; every field changes the data and the metrics."""

    env_id: str = "racetrack-v1"
    control_hz: float = 10.0  # sensor messages and commands per second
    sim_hz: float = 20.0  # physics steps per second (a multiple of control_hz)
    episode_s: float = 30.0  # an episode is truncated after this much simulated time
    lateral_noise_m: float = 0.25  # std of the sensor noise on the lateral offset
    heading_noise_rad: float = 0.04  # std of the sensor noise on the heading error
    initial_lateral_m: float = 1.0  # start offset drawn from U(-x, x)
    initial_heading_rad: float = 0.1  # start heading error drawn from U(-x, x)
    steer_limit_rad: float = math.pi / 4  # highway-env's steering range

    def __post_init__(self) -> None:
        checks = [
            ("control_hz", self.control_hz, 0 < self.control_hz <= 100, "in (0, 100]"),
            ("sim_hz", self.sim_hz, self.sim_hz >= self.control_hz
             and float(self.sim_hz / self.control_hz).is_integer(),
             "a whole multiple of control_hz"),
            ("episode_s", self.episode_s, 0 < self.episode_s <= 3600, "in (0, 3600]"),
            ("lateral_noise_m", self.lateral_noise_m, 0 <= self.lateral_noise_m <= 5,
             "in [0, 5]"),
            ("heading_noise_rad", self.heading_noise_rad, 0 <= self.heading_noise_rad <= 1,
             "in [0, 1]"),
            ("initial_lateral_m", self.initial_lateral_m, 0 <= self.initial_lateral_m <= 2,
             "in [0, 2] (the lane is 5 m wide)"),
            ("initial_heading_rad", self.initial_heading_rad,
             0 <= self.initial_heading_rad <= 0.5, "in [0, 0.5]"),
            ("steer_limit_rad", self.steer_limit_rad, 0 < self.steer_limit_rad < math.pi / 2,
             "in (0, pi/2)"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise SimError(f"Simulator setting {name!r} must be {rule}; got {value!r}.")

    @property
    def steps(self) -> int:
        """Control ticks in a full episode."""
        return round(self.episode_s * self.control_hz)

    @property
    def period_ns(self) -> int:
        return round(1e9 / self.control_hz)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Truth:
    """The exact state, relative to the lane the car must keep (privileged)."""

    lateral_m: float  # + to the left of the lane centre (the side heading turns to)
    heading_error_rad: float  # car heading minus lane heading, wrapped to [-pi, pi)
    curvature_per_m: float  # signed 1/radius of the lane here, + when it bends left
    x_m: float  # world position, for plots
    y_m: float


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one control tick did."""

    reward: float  # highway-env's reward for the tick
    off_road: bool
    crashed: bool
    done: bool  # the episode is over: off the road, crashed or out of time


class LaneKeepingSim:
    """One highway-env race track, reset per episode with a seed, stepped per control tick."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # never open a window
        try:
            import gymnasium as gym
            import highway_env  # type: ignore[import-untyped]  # noqa: F401  (registers envs)
        except ImportError as err:
            raise SimError(f"The simulator needs the [sim] extra ({err.name} is missing): "
                           "pip install -e '.[sim]'.") from err
        c = self.config
        self._env: Any = gym.make(c.env_id, config={
            "other_vehicles": 0,
            "controlled_vehicles": 1,
            "policy_frequency": c.control_hz,
            "simulation_frequency": c.sim_hz,
            "duration": c.episode_s,
            "terminate_off_road": True,
            "action": {"type": "ContinuousAction", "longitudinal": False, "lateral": True,
                       "steering_range": [-c.steer_limit_rad, c.steer_limit_rad]},
            "observation": {"type": "Kinematics", "vehicles_count": 1},
        })
        self._road: Any = None
        self._lane_id = 0
        self._noise = np.random.default_rng(0)
        self.tick = 0

    @property
    def _car(self) -> Any:
        return self._env.unwrapped.vehicle

    def reset(self, seed: int) -> None:
        """Start the episode of ``seed``: the same seed gives the same episode."""
        self._env.reset(seed=seed)
        env = self._env.unwrapped
        self._road = env.road.network
        car = self._car
        self._lane_id = int(car.lane_index[2])
        start = np.random.default_rng([seed, 0])
        lane = self._road.get_lane(car.lane_index)
        s, _ = lane.local_coordinates(car.position)
        lateral = start.uniform(-self.config.initial_lateral_m, self.config.initial_lateral_m)
        heading = start.uniform(-self.config.initial_heading_rad,
                                self.config.initial_heading_rad)
        car.position = np.asarray(lane.position(s, lateral), dtype=float)
        car.heading = float(lane.heading_at(s) + heading)
        car.on_state_update()
        self._noise = np.random.default_rng([seed, 1])
        self.tick = 0

    def truth(self) -> Truth:
        car = self._car
        origin, dest, _ = car.lane_index
        lane = self._road.get_lane((origin, dest, self._lane_id))
        s, lateral = lane.local_coordinates(car.position)
        error = (car.heading - lane.heading_at(s) + math.pi) % (2 * math.pi) - math.pi
        radius = getattr(lane, "radius", None)
        curvature = float(lane.direction) / float(radius) if radius else 0.0
        return Truth(float(lateral), float(error), curvature, float(car.position[0]),
                     float(car.position[1]))

    def observe(self, truth: Truth | None = None) -> np.ndarray:
        """The sensor reading of this tick, float32 in :data:`FEATURE_NAMES` order."""
        t = truth or self.truth()
        noise = self._noise.normal(size=2)  # drawn every tick: the same noise per seed
        return np.array([t.lateral_m + self.config.lateral_noise_m * noise[0],
                         t.heading_error_rad + self.config.heading_noise_rad * noise[1]],
                        dtype=np.float32)

    def step(self, steer_rad: float) -> StepResult:
        """Apply ``steer_rad`` (clipped to the steering range) for one control period."""
        if not math.isfinite(steer_rad):
            raise SimError(f"Steering command must be a finite number; got {steer_rad!r}.")
        action = np.array([steer_rad / self.config.steer_limit_rad], dtype=np.float32)
        _, reward, terminated, truncated, _ = self._env.step(action)
        self.tick += 1
        car = self._car
        return StepResult(float(reward), not bool(car.on_road), bool(car.crashed),
                          bool(terminated or truncated) or self.tick >= self.config.steps)

    def road_lines(self, step_m: float = 1.0) -> list[np.ndarray]:
        """Every lane centre line as (n, 2) world points, for plots."""
        lines = []
        for ends in self._env.unwrapped.road.network.graph.values():
            for lanes in ends.values():
                for lane in lanes:
                    s = np.arange(0.0, float(lane.length) + step_m, step_m)
                    lines.append(np.array([lane.position(v, 0.0) for v in s], dtype=float))
        return lines

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> LaneKeepingSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
