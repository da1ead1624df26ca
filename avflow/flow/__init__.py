"""The flow core: interpolants, time samplers, objectives, ODE solvers and guidance; the DDPM of DAVIS beside them.

It knows no audio, video or Flax: a velocity field is any `f(x_t, t, cond) -> v` with `t` of shape (B,).
Time convention: t=0 is the source x0 (data for VisAH-FM, Gaussian noise for DAVIS-Flow), t=1 the target x1.
`avflow.flow.diffusion` (DDPM/DDIM) uses the same interface for its ε-predictor and names its clean data `x_data`.
"""
from avflow.flow import diffusion, guidance
from avflow.flow.diffusion import DiffusionConfig, DiffusionTrajectory, ddim_sample, diffusion_loss, q_sample
from avflow.flow.objectives import (ObjectiveConfig, consistency_loss, flow_loss, flow_matching_loss,
                                    per_example_loss, rollout_loss)
from avflow.flow.paths import interpolate, sample_source, target_velocity
from avflow.flow.solvers import (AdaptiveSolution, Hook, Trajectory, grid_nfe, integrate, integrate_dopri5,
                                 masked_replacement)
from avflow.flow.time import discrete_grid_time, logit_normal_time, sample_time, time_grid, uniform_time

__all__ = [
    "AdaptiveSolution", "DiffusionConfig", "DiffusionTrajectory", "Hook", "ObjectiveConfig", "Trajectory",
    "consistency_loss", "ddim_sample", "diffusion", "diffusion_loss", "discrete_grid_time", "flow_loss",
    "flow_matching_loss", "grid_nfe", "guidance", "integrate", "integrate_dopri5", "interpolate", "logit_normal_time",
    "masked_replacement", "per_example_loss", "q_sample", "rollout_loss", "sample_source", "sample_time",
    "target_velocity", "time_grid", "uniform_time",
]
