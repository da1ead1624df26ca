"""The flow core: interpolants, time samplers, objectives and ODE solvers.

It knows no audio, video or Flax: a velocity field is any `f(x_t, t, cond) -> v` with `t` of shape (B,).
Time convention: t=0 is the input x0, t=1 the target x1.
"""
from avflow.flow.objectives import ObjectiveConfig, consistency_loss, flow_loss, flow_matching_loss, rollout_loss
from avflow.flow.paths import interpolate, target_velocity
from avflow.flow.solvers import Trajectory, integrate
from avflow.flow.time import discrete_grid_time, sample_time, time_grid, uniform_time

__all__ = [
    "ObjectiveConfig", "Trajectory", "consistency_loss", "discrete_grid_time", "flow_loss", "flow_matching_loss",
    "integrate", "interpolate", "rollout_loss", "sample_time", "target_velocity", "time_grid", "uniform_time",
]
