"""Time schedules for sampling: where the solver steps between ``t = 1`` (noise) and ``t = 0`` (data).

A schedule is a decreasing grid ``1 = t_0 > t_1 > ... > t_N = 0`` (``N`` = steps), built in float64
so that step sizes ``t_{k+1} - t_k`` are exact to well below float32 precision. Each schedule maps the
uniform grid through a monotone warp ``[0, 1] -> [0, 1]`` that fixes both ends:

- ``uniform``: no warp.
- ``shifted``: the SD3/Flux time shift ``t' = shift·t / (1 + (shift - 1)·t)``. ``shift > 1`` spends
  more steps near the noise end (large ``t``), ``shift < 1`` near the data end; ``shift = 1`` is
  ``uniform``. The same warp serves the training timestep sampler (``lodit.dit.flow``).
- ``sway``: F5-TTS sway sampling, converted to lodit's convention (derivation in :func:`sway_time`).

The time shift and its sequence-length-dependent strength (:func:`length_dependent_shift`) live here
because both the sampler and the training objective use them and ``samplers`` may not import ``dit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lodit.errors import LoditError
from lodit.registry import Registry

ScheduleFn = Callable[..., torch.Tensor]
SCHEDULES: Registry[ScheduleFn] = Registry("time schedule")

# Sway strengths outside this range make the warp non-monotone (see ``sway_time``).
SWAY_MIN = -1.0
SWAY_MAX = 2.0 / (math.pi - 2.0)


def shift_time(t: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """SD3/Flux time shift ``t' = shift·t / (1 + (shift - 1)·t)``: maps 0 -> 0 and 1 -> 1, monotone.

    Equivalently ``t'/(1 - t') = shift·t/(1 - t)``: the noise-to-signal ratio is multiplied by
    ``shift``, so ``shift > 1`` gives more weight (training) or more steps (sampling) to
    high-noise times. ``shift`` may be a tensor broadcasting against ``t`` (one shift per sample).
    """
    if bool((torch.as_tensor(shift) <= 0).any()):
        raise LoditError(f"time shift must be > 0, got {shift}; use 1.0 for no shift")
    # shift·t / (shift·t + (1 - t)) is the same value with exact ends: 0 -> 0/1, 1 -> shift/shift.
    return shift * t / (shift * t + (1.0 - t))


def length_dependent_shift(
    seq_len: float | torch.Tensor,
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> torch.Tensor:
    """Time-shift strength that grows with sequence length (Flux / SD3 "dynamic shifting").

    Longer sequences carry more redundant information, so the same noise level destroys less of the
    signal; shifting towards noise compensates. The log-shift ``mu`` is linear in the length,
    passing through ``base_shift`` at ``base_seq_len`` frames and ``max_shift`` at ``max_seq_len``
    (extrapolated linearly outside that range), and the shift is ``exp(mu)``::

        mu(L) = base_shift + (max_shift - base_shift) · (L - base_seq_len) / (max_seq_len - base_seq_len)
        shift(L) = exp(mu(L))

    With the defaults (those of diffusers' Flux pipeline) a 10 s clip of 25 Hz latents (250 frames)
    gets shift ≈ 1.65 and 4096 frames get ≈ 3.16. Applying :func:`shift_time` with this shift equals
    diffusers' exponential ``time_shift(mu, 1, t)``. Returns a float64 tensor shaped like ``seq_len``.
    """
    if max_seq_len <= base_seq_len:
        raise LoditError(
            f"max_seq_len ({max_seq_len}) must be greater than base_seq_len ({base_seq_len})"
        )
    length = torch.as_tensor(seq_len, dtype=torch.float64)
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = base_shift + slope * (length - base_seq_len)
    return torch.exp(mu)


def sway_time(t: torch.Tensor, s: float) -> torch.Tensor:
    """F5-TTS sway sampling in lodit's convention: ``t' = t + s·(t - sin(π t / 2))``.

    F5-TTS writes sway with ``u = 0`` as noise and ``u = 1`` as data::

        u' = u + s·(cos(π u / 2) - 1 + u)

    lodit's time is ``t = 1 - u`` (``t = 1`` noise), so ``t' = 1 - u'`` with ``u = 1 - t``::

        t' = 1 - (1 - t) - s·(cos(π (1 - t) / 2) - 1 + 1 - t)
           = t - s·(sin(π t / 2) - t)          # cos(π/2 - x) = sin(x)
           = t + s·(t - sin(π t / 2))

    Both ends are fixed (sin 0 = 0, sin π/2 = 1). ``s < 0`` puts more steps near the noise end, as in
    F5-TTS; ``s = -1`` (its default) gives ``t' = sin(π t / 2)``. The warp's slope is
    ``1 + s·(1 - (π/2)·cos(π t / 2))``, whose bracket ranges over ``[1 - π/2, 1]``, so it is
    monotone exactly for ``-1 <= s <= 2 / (π - 2) ≈ 1.75``.
    """
    if not SWAY_MIN <= s <= SWAY_MAX:
        raise LoditError(
            f"sway coefficient must be in [{SWAY_MIN}, {SWAY_MAX:.3f}] to keep the schedule "
            f"monotone, got {s}; F5-TTS uses -1"
        )
    return t + s * (t - torch.sin(0.5 * math.pi * t))


def _uniform_grid(steps: int) -> torch.Tensor:
    if steps < 1:
        raise LoditError(f"sampling steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


@SCHEDULES.register("uniform")
def uniform_schedule(steps: int, **_other_schedule_options) -> torch.Tensor:
    """Equal steps from 1 to 0."""
    return _uniform_grid(steps)


@SCHEDULES.register("shifted")
def shifted_schedule(steps: int, *, shift: float = 1.0, **_other_schedule_options) -> torch.Tensor:
    """Uniform steps warped by :func:`shift_time`."""
    return shift_time(_uniform_grid(steps), shift)


@SCHEDULES.register("sway")
def sway_schedule(steps: int, *, sway: float = -1.0, **_other_schedule_options) -> torch.Tensor:
    """Uniform steps warped by :func:`sway_time` (F5-TTS sway sampling, converted)."""
    return sway_time(_uniform_grid(steps), sway)


def make_timesteps(name: str, steps: int, **options) -> torch.Tensor:
    """The ``(steps + 1,)`` float64 grid of schedule ``name``, decreasing from exactly 1 to exactly 0.

    ``options`` holds the options of every schedule (``shift``, ``sway``); each schedule reads its own.
    (The warps are written so that the ends come out exact in floating point, leaving no sliver of
    noise at the end of sampling.)
    """
    grid = SCHEDULES.get(name)(steps, **options)
    if grid[0] != 1.0 or grid[-1] != 0.0 or not bool((grid[1:] < grid[:-1]).all()):
        raise LoditError(f"time schedule {name!r} with {options} does not decrease from 1 to 0")
    return grid
