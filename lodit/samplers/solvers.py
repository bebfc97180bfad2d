"""ODE solvers for the flow ``dx/dt = v(x, t)``, integrated from ``t = 1`` (noise) to ``t = 0`` (data).

Every solver has the signature ``solve(velocity_fn, x1, timesteps, **options) -> SolveResult``:

- ``velocity_fn(x, t)`` takes the state ``x`` and a ``(B,)`` tensor of times on ``x``'s device
  (float32, or float64 when ``x`` is float64: never half precision, whose resolution near ``t = 1``
  is coarser than a sampling step) and returns the velocity, shaped like ``x``. It can be any
  callable; solvers know nothing about networks or guidance.
- ``timesteps`` is a decreasing grid from :func:`lodit.samplers.schedules.make_timesteps`.
  Fixed-step solvers step between consecutive entries. The ``adaptive`` solver integrates from
  ``timesteps[0]`` to ``timesteps[-1]`` with steps chosen by error control and uses the first
  interval only as its initial step size.
- ``SolveResult.nfe`` counts calls of ``velocity_fn``; ``timesteps`` holds the times the solver
  actually visited. With ``N`` intervals: ``euler`` N, ``heun`` 2N (see :func:`heun`),
  ``midpoint`` 2N, ``rk4`` 4N; ``adaptive`` as many as error control needed (rejected steps included).

Options a solver does not use (``rtol``/``atol`` for fixed-step solvers) are accepted and ignored,
so one :class:`~lodit.samplers.sample.SamplerConfig` drives every solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch

from lodit.errors import LoditError
from lodit.registry import Registry

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SolveResult:
    x0: torch.Tensor  # the state at the last time (t = 0 for a full schedule)
    nfe: int  # number of velocity_fn evaluations
    timesteps: torch.Tensor  # (K + 1,) float64 times visited, from first to last
    trajectory: torch.Tensor | None = None  # (K + 1, *x.shape) states at those times, if asked


Solver = Callable[..., SolveResult]
SOLVERS: Registry[Solver] = Registry("sampler")


class _CountedVelocity:
    """Calls ``velocity_fn`` with a ``(B,)`` time tensor and counts the calls."""

    def __init__(self, velocity_fn: VelocityFn):
        self.velocity_fn = velocity_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        t_dtype = torch.promote_types(x.dtype, torch.float32)
        t_batch = torch.full((x.shape[0],), t, dtype=t_dtype, device=x.device)
        return self.velocity_fn(x, t_batch)


# One step of a fixed-step method: (velocity, x, t, t_next) -> x at t_next.
StepFn = Callable[[_CountedVelocity, torch.Tensor, float, float], torch.Tensor]


def _check_grid(timesteps: torch.Tensor) -> list[float]:
    times = [float(t) for t in torch.as_tensor(timesteps, dtype=torch.float64).flatten()]
    if len(times) < 2:
        raise LoditError("a sampling schedule needs at least 2 times (1 step)")
    if any(b >= a for a, b in pairwise(times)):
        raise LoditError("sampling times must strictly decrease (from noise t=1 to data t=0)")
    return times


def _fixed_step_solve(
    step: StepFn,
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    timesteps: torch.Tensor,
    return_trajectory: bool,
) -> SolveResult:
    times = _check_grid(timesteps)
    velocity = _CountedVelocity(velocity_fn)
    x = x1
    states = [x] if return_trajectory else []
    for t, t_next in pairwise(times):
        x = step(velocity, x, t, t_next)
        if return_trajectory:
            states.append(x)
    return SolveResult(
        x0=x,
        nfe=velocity.calls,
        timesteps=torch.tensor(times, dtype=torch.float64),
        trajectory=torch.stack(states) if return_trajectory else None,
    )


def _euler_step(velocity: _CountedVelocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    return x + (t_next - t) * velocity(x, t)


def _heun_step(velocity: _CountedVelocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    dt = t_next - t
    v_start = velocity(x, t)
    x_euler = x + dt * v_start
    return x + 0.5 * dt * (v_start + velocity(x_euler, t_next))


def _midpoint_step(velocity: _CountedVelocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    dt = t_next - t
    x_half = x + 0.5 * dt * velocity(x, t)
    return x + dt * velocity(x_half, t + 0.5 * dt)


def _rk4_step(velocity: _CountedVelocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    dt = t_next - t
    k1 = velocity(x, t)
    k2 = velocity(x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = velocity(x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = velocity(x + dt * k3, t_next)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@SOLVERS.register("euler")
def euler(velocity_fn: VelocityFn, x1: torch.Tensor, timesteps: torch.Tensor, *,
          return_trajectory: bool = False, **_unused_options) -> SolveResult:
    """First-order Euler: one evaluation per step (the usual flow-matching sampler)."""
    return _fixed_step_solve(_euler_step, velocity_fn, x1, timesteps, return_trajectory)


@SOLVERS.register("heun")
def heun(velocity_fn: VelocityFn, x1: torch.Tensor, timesteps: torch.Tensor, *,
         return_trajectory: bool = False, **_unused_options) -> SolveResult:
    """Heun's method (explicit trapezoid), second order, two evaluations per step (``2N`` in all).

    Every step, the last included, uses the corrector, which evaluates the velocity at the step's
    end; on the last step that is ``t = 0``, where the ideal flow-matching velocity is well defined
    (``E[eps - x0 | x_0 = x] = -x``). diffusers' ``FlowMatchHeunDiscreteScheduler`` instead makes
    the last step plain Euler (``2N - 1`` evaluations); that keeps an ``O(h^2)`` error but changes
    its constant, and on some problems the two error terms nearly cancel, so the error stops
    shrinking 4x per halved step. lodit keeps the textbook method so its order is what it claims.
    """
    return _fixed_step_solve(_heun_step, velocity_fn, x1, timesteps, return_trajectory)


@SOLVERS.register("midpoint")
def midpoint(velocity_fn: VelocityFn, x1: torch.Tensor, timesteps: torch.Tensor, *,
             return_trajectory: bool = False, **_unused_options) -> SolveResult:
    """Explicit midpoint method, second order, two evaluations per step (never at ``t = 0``)."""
    return _fixed_step_solve(_midpoint_step, velocity_fn, x1, timesteps, return_trajectory)


@SOLVERS.register("rk4")
def rk4(velocity_fn: VelocityFn, x1: torch.Tensor, timesteps: torch.Tensor, *,
        return_trajectory: bool = False, **_unused_options) -> SolveResult:
    """Classical fourth-order Runge–Kutta, four evaluations per step."""
    return _fixed_step_solve(_rk4_step, velocity_fn, x1, timesteps, return_trajectory)


# Dormand–Prince 5(4) Butcher tableau: nodes, stage weights, 5th-order weights, and the difference
# between the 5th- and embedded 4th-order weights (the local error estimate). The 7th stage is the
# velocity at the accepted point, reused as the next step's first stage ("first same as last").
_DP_NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_WEIGHTS_5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_WEIGHTS_4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_ERROR = tuple(w5 - w4 for w5, w4 in zip(_DP_WEIGHTS_5, _DP_WEIGHTS_4))
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


def _combine(x: torch.Tensor, h: float, weights, ks: list[torch.Tensor]) -> torch.Tensor:
    out = x
    for w, k in zip(weights, ks):
        if w != 0.0:
            out = out + (h * w) * k
    return out


def _error_ratio(err: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, rtol: float, atol: float) -> float:
    """Largest per-sample RMS of the error scaled by ``atol + rtol·|x|`` (<= 1 means accept)."""
    scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
    per_sample = (err / scale).pow(2).flatten(1).mean(dim=1).sqrt()  # (B,)
    return float(per_sample.max())


@SOLVERS.register("adaptive")
def adaptive(velocity_fn: VelocityFn, x1: torch.Tensor, timesteps: torch.Tensor, *,
             rtol: float = 1e-3, atol: float = 1e-3, max_steps: int = 10_000,
             return_trajectory: bool = False, **_unused_options) -> SolveResult:
    """Dormand–Prince 5(4) with step-size control (the method of scipy's ``RK45``).

    Each attempted step costs 6 evaluations (the 7th is reused by the next step). The local error,
    the difference between the embedded 5th- and 4th-order solutions, is scaled by
    ``atol + rtol·max(|x|, |x_new|)``; a step is accepted when the RMS of the scaled error is <= 1
    for every sample in the batch (the batch shares one step size, so the worst sample decides).
    The next step is ``h·clip(0.9·ratio^(-1/5), 0.2, 10)`` (never growing after a rejection).
    Integrates from ``timesteps[0]`` to ``timesteps[-1]``; the first interval is the initial step.
    """
    if rtol <= 0 or atol <= 0:
        raise LoditError(f"adaptive solver tolerances must be > 0, got rtol={rtol}, atol={atol}")
    times = _check_grid(timesteps)
    t, t_end = times[0], times[-1]
    step_size = times[0] - times[1]  # magnitude; we integrate towards smaller t
    velocity = _CountedVelocity(velocity_fn)
    x = x1
    visited = [t]
    states = [x] if return_trajectory else []
    k_first = velocity(x, t)
    attempts = 0
    while t > t_end:
        attempts += 1
        if attempts > max_steps:
            raise LoditError(
                f"adaptive solver needed more than {max_steps} steps (reached t={t:.4g}); "
                f"loosen rtol/atol or use a fixed-step sampler"
            )
        h = -min(step_size, t - t_end)  # negative: time decreases
        ks = [k_first]
        for node, stage in zip(_DP_NODES[1:6], _DP_STAGES[1:]):
            ks.append(velocity(_combine(x, h, stage, ks), t + node * h))
        x_new = _combine(x, h, _DP_WEIGHTS_5, ks)
        t_new = t_end if h == -(t - t_end) else t + h
        ks.append(velocity(x_new, t_new))
        ratio = _error_ratio(_combine(torch.zeros_like(x), h, _DP_ERROR, ks), x, x_new, rtol, atol)
        if not math.isfinite(ratio):
            raise LoditError(f"adaptive solver: the velocity is not finite near t={t:.4g}")
        factor = _SAFETY * ratio ** -0.2 if ratio > 0 else _MAX_FACTOR
        if ratio <= 1.0:
            x, t, k_first = x_new, t_new, ks[-1]
            visited.append(t)
            if return_trajectory:
                states.append(x)
            step_size = abs(h) * min(_MAX_FACTOR, max(_MIN_FACTOR, factor))
        else:
            step_size = abs(h) * min(1.0, max(_MIN_FACTOR, factor))
    return SolveResult(
        x0=x,
        nfe=velocity.calls,
        timesteps=torch.tensor(visited, dtype=torch.float64),
        trajectory=torch.stack(states) if return_trajectory else None,
    )
