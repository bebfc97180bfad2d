"""Classifier-free guidance (CFG): turn a conditional model into a guided velocity function.

``guided_velocity(model_fn, cond, uncond, cfg)`` returns a ``velocity_fn(x, t)`` for the solvers.
``model_fn(x, t, condition)`` is one forward of the network for a batch; ``cond`` and ``uncond``
are whatever that function takes as its condition (a tensor, a dict of tensors such as
``{"text": ..., "text_mask": ...}``, or ``None``).

Guided velocity, with ``v_c = model_fn(x, t, cond)`` and ``v_u = model_fn(x, t, uncond)``::

    v = v_u + scale·(v_c - v_u)

- ``scale = 1`` is the conditional model alone (the unconditional branch is never run),
  ``scale = 0`` the unconditional one.
- **Negative prompts**: pass the negative prompt's condition as ``uncond`` instead of the null
  condition; guidance then pushes away from it.
- **Interval** ``(lo, hi)``: guidance only where ``lo <= t <= hi`` (lodit time, ``t = 1`` noise);
  elsewhere the conditional velocity alone, at half the cost. Guidance at the highest noise levels
  mostly reduces diversity, so intervals like ``(0, 0.8)`` are common.
- **Rescale** ``φ`` (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
  large scales inflate the guided output's magnitude; its per-sample standard deviation is brought
  back to that of the conditional branch, ``v_r = v·std(v_c)/std(v)``, and blended
  ``φ·v_r + (1 - φ)·v``. ``φ = 0`` is plain CFG. With a padding ``mask`` the statistics use valid
  frames only.

**Cost.** Where guidance is on, both branches run in ONE forward on a doubled batch
(``cond`` and ``uncond`` concatenated along the batch dimension), unless the two conditions cannot
be stacked (different structure, e.g. ``None`` vs a tensor, or different shapes): then they run as
two forwards. The returned function counts ``model_calls`` (network forwards, a doubled batch
counting once) and ``guided_evaluations`` (evaluations that ran both branches, each costing about
twice a conditional-only evaluation). The solver separately reports ``nfe``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lodit.errors import LoditError

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class GuidanceConfig:
    scale: float = 1.0  # 1 = conditional only (no guidance)
    interval: tuple[float, float] = (0.0, 1.0)  # guide only for t in [lo, hi] (t = 1 is noise)
    rescale: float = 0.0  # std-rescale blend φ in [0, 1]; 0 = plain CFG


def _check(cfg: GuidanceConfig) -> None:
    lo, hi = cfg.interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise LoditError(f"guidance.interval must satisfy 0 <= lo <= hi <= 1, got {cfg.interval}")
    if not 0.0 <= cfg.rescale <= 1.0:
        raise LoditError(f"guidance.rescale must be in [0, 1], got {cfg.rescale}")


def stack_conditions(cond: Any, uncond: Any) -> tuple[bool, Any]:
    """``(True, both)`` with tensors concatenated along dim 0, or ``(False, None)`` if they don't fit.

    Dicts, lists and tuples are stacked leaf by leaf; other leaves (strings, numbers, ``None``)
    must be equal in both and are kept once.
    """
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        if cond.shape[1:] != uncond.shape[1:] or cond.dtype != uncond.dtype:
            return False, None
        return True, torch.cat([cond, uncond], dim=0)
    if isinstance(cond, dict) and isinstance(uncond, dict):
        if cond.keys() != uncond.keys():
            return False, None
        stacked = {}
        for key in cond:
            ok, stacked[key] = stack_conditions(cond[key], uncond[key])
            if not ok:
                return False, None
        return True, stacked
    if isinstance(cond, (list, tuple)) and type(cond) is type(uncond) and len(cond) == len(uncond):
        items = []
        for a, b in zip(cond, uncond):
            ok, item = stack_conditions(a, b)
            if not ok:
                return False, None
            items.append(item)
        return True, type(cond)(items)
    if isinstance(cond, torch.Tensor) or isinstance(uncond, torch.Tensor):
        return False, None
    return (True, cond) if cond == uncond else (False, None)


def _std_per_sample(v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Population std of each sample over all non-batch dims (valid frames only with a mask)."""
    if mask is None:
        return v.flatten(1).std(dim=1, correction=0)  # (B,)
    weight = mask.to(v.dtype).reshape(*mask.shape, *([1] * (v.dim() - mask.dim()))).expand_as(v)
    count = weight.flatten(1).sum(dim=1).clamp_min(1.0)
    mean = (v * weight).flatten(1).sum(dim=1) / count
    centred = v - mean.reshape(-1, *([1] * (v.dim() - 1)))
    return ((centred.pow(2) * weight).flatten(1).sum(dim=1) / count).sqrt()


def rescale_guidance(
    guided: torch.Tensor, conditional: torch.Tensor, phi: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Blend ``guided`` with its copy rescaled to the per-sample std of ``conditional``."""
    if phi == 0.0:
        return guided
    ratio = _std_per_sample(conditional, mask) / _std_per_sample(guided, mask).clamp_min(1e-12)
    rescaled = guided * ratio.reshape(-1, *([1] * (guided.dim() - 1)))
    return phi * rescaled + (1.0 - phi) * guided


class GuidedVelocity:
    """``velocity_fn(x, t)`` applying CFG around ``model_fn``; counts forwards (see module doc)."""

    def __init__(self, model_fn: ModelFn, cond: Any, uncond: Any, cfg: GuidanceConfig,
                 mask: torch.Tensor | None = None):
        _check(cfg)
        if cfg.scale != 1.0 and uncond is None:
            raise LoditError(
                f"guidance.scale={cfg.scale} needs an unconditional (or negative-prompt) condition; "
                f"pass one or set guidance.scale=1"
            )
        self.model_fn, self.cond, self.uncond, self.cfg, self.mask = model_fn, cond, uncond, cfg, mask
        self.batched, self.stacked = stack_conditions(cond, uncond) if uncond is not None else (False, None)
        self.model_calls = 0
        self.guided_evaluations = 0

    def _forward(self, x: torch.Tensor, t: torch.Tensor, condition: Any) -> torch.Tensor:
        self.model_calls += 1
        return self.model_fn(x, t, condition)

    def _both_branches(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batched:
            both = self._forward(torch.cat([x, x]), torch.cat([t, t]), self.stacked)  # (2B, ...)
            v_cond, v_uncond = both.chunk(2, dim=0)
            return v_cond, v_uncond
        return self._forward(x, t, self.cond), self._forward(x, t, self.uncond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.interval
        # Comparing with Python floats happens in t's dtype, so float32 rounding of a schedule time
        # (0.8 -> 0.80000001) cannot push it out of an interval that ends at that time.
        inside = (t >= lo) & (t <= hi)  # (B,)
        if self.cfg.scale == 1.0 or not bool(inside.any()):
            return self._forward(x, t, self.cond)
        self.guided_evaluations += 1
        v_cond, v_uncond = self._both_branches(x, t)
        guided = v_uncond + self.cfg.scale * (v_cond - v_uncond)
        guided = rescale_guidance(guided, v_cond, self.cfg.rescale, self.mask)
        if bool(inside.all()):
            return guided
        return torch.where(inside.reshape(-1, *([1] * (x.dim() - 1))), guided, v_cond)


def guided_velocity(model_fn: ModelFn, cond: Any, uncond: Any, cfg: GuidanceConfig,
                    mask: torch.Tensor | None = None) -> GuidedVelocity:
    """Wrap ``model_fn(x, t, condition)`` into a CFG ``velocity_fn(x, t)`` for the solvers.

    ``mask`` (``(B, T)``, True = valid frame) only affects the rescale statistics.
    """
    return GuidedVelocity(model_fn, cond, uncond, cfg, mask)
