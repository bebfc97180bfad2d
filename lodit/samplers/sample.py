"""The one sampling entry point: noise + conditions -> latents, with the cost of getting there.

``sample(model_fn, noise, cond, uncond, cfg)`` builds the time schedule, wraps ``model_fn`` with
classifier-free guidance and runs the chosen solver from ``t = 1`` to ``t = 0``. ``lodit sample``
and the evaluation both call it, so a :class:`SamplerConfig` means the same thing everywhere.
The returned latents are in the model's (normalised) latent space; denormalise them with the
latent statistics the model was trained with before decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lodit.samplers.guidance import GuidanceConfig, ModelFn, guided_velocity
from lodit.samplers.schedules import make_timesteps
from lodit.samplers.solvers import SOLVERS


@dataclass
class SamplerConfig:
    sampler: str = "euler"  # euler | heun | midpoint | rk4 | adaptive
    steps: int = 20  # schedule intervals (adaptive: only sets its first step size)
    schedule: str = "uniform"  # uniform | shifted | sway
    shift: float = 1.0  # for schedule=shifted
    sway: float = -1.0  # for schedule=sway (F5-TTS coefficient, converted to lodit time)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    rtol: float = 1e-3  # for sampler=adaptive
    atol: float = 1e-3  # for sampler=adaptive

    def with_changes(
        self,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        schedule: str | None = None,
        cfg: float | None = None,
        cfg_interval: Sequence[float] | None = None,
    ) -> SamplerConfig:
        """A copy with the given settings changed (``None`` keeps the current one).

        ``cfg`` and ``cfg_interval`` are the guidance scale and interval (``guidance.scale`` /
        ``guidance.interval``), under the names ``lodit sample`` and the app give them.
        """
        guidance = self.guidance
        if cfg is not None:
            guidance = replace(guidance, scale=float(cfg))
        if cfg_interval is not None:
            guidance = replace(guidance, interval=tuple(float(v) for v in cfg_interval))
        return replace(
            self,
            sampler=self.sampler if sampler is None else sampler,
            steps=self.steps if steps is None else int(steps),
            schedule=self.schedule if schedule is None else schedule,
            guidance=replace(guidance, interval=tuple(guidance.interval)),
        )


@dataclass
class SampleResult:
    x0: torch.Tensor  # generated latents, shaped like the noise
    nfe: int  # velocity evaluations by the solver
    model_calls: int  # network forwards (a doubled CFG batch counts once)
    guided_evaluations: int  # evaluations that ran both CFG branches
    timesteps: torch.Tensor  # (K + 1,) float64 times the solver visited
    trajectory: torch.Tensor | None = None  # (K + 1, *noise.shape) when asked for


def initial_noise(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal starting noise, drawn on the generator's device and moved to ``device``.

    Drawing on the generator's device (CPU by default) makes a seed give the same noise whatever
    device the model runs on.
    """
    draw_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype)
    return noise.to(device)


def sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    cond: Any,
    uncond: Any = None,
    cfg: SamplerConfig | None = None,
    *,
    mask: torch.Tensor | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Integrate the guided flow from ``noise`` (t = 1) to data (t = 0).

    ``model_fn(x, t, condition)`` runs the network on a batch; ``cond`` is the condition,
    ``uncond`` the null condition or a negative prompt's (needed when ``guidance.scale != 1``).
    ``mask`` (``(B, T)``, True = valid) marks padded frames for the guidance statistics.
    Deterministic: the same noise, conditions and config give the same output. Runs without
    autograd; put the network in eval mode first.
    """
    cfg = cfg or SamplerConfig()
    solver = SOLVERS.get(cfg.sampler)
    timesteps = make_timesteps(cfg.schedule, cfg.steps, shift=cfg.shift, sway=cfg.sway)
    velocity = guided_velocity(model_fn, cond, uncond, cfg.guidance, mask)
    with torch.no_grad():
        result = solver(
            velocity, noise, timesteps, rtol=cfg.rtol, atol=cfg.atol, return_trajectory=return_trajectory
        )
    return SampleResult(
        x0=result.x0,
        nfe=result.nfe,
        model_calls=velocity.model_calls,
        guided_evaluations=velocity.guided_evaluations,
        timesteps=result.timesteps,
        trajectory=result.trajectory,
    )
