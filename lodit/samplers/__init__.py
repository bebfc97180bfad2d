"""Sampling flow-matching models: ODE solvers, timestep schedules, classifier-free guidance.

Convention: ``t = 1`` is noise, ``t = 0`` is data; solvers integrate from 1 to 0.
May import: torch and the top-level helpers only (solvers take any velocity function).
"""

from lodit.samplers.guidance import (
    GuidanceConfig,
    GuidedVelocity,
    guided_velocity,
    rescale_guidance,
)
from lodit.samplers.sample import SamplerConfig, SampleResult, initial_noise, sample
from lodit.samplers.schedules import (
    SCHEDULES,
    length_dependent_shift,
    make_timesteps,
    shift_time,
    sway_time,
)
from lodit.samplers.solvers import SOLVERS, SolveResult

__all__ = [
    "SCHEDULES",
    "SOLVERS",
    "GuidanceConfig",
    "GuidedVelocity",
    "SampleResult",
    "SamplerConfig",
    "SolveResult",
    "guided_velocity",
    "initial_noise",
    "length_dependent_shift",
    "make_timesteps",
    "rescale_guidance",
    "sample",
    "shift_time",
    "sway_time",
]
