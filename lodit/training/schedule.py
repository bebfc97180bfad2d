"""Learning-rate schedules: linear warm-up, then cosine decay or a constant rate.

:func:`lr_factor` is the schedule as a pure function of the step (the multiplier of the base
learning rate); :func:`make_scheduler` wraps it in a ``torch.optim.lr_scheduler.LambdaLR``.
The factor for step ``s`` (the number of optimizer steps already taken) is:

- warm-up, ``s < warmup_steps``: ``(s + 1) / warmup_steps`` (no step runs at a zero rate);
- cosine: ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (s - warmup) / (max_steps - warmup)``
  clipped to ``[0, 1]`` and ``m = min_lr_ratio`` — 1 right after warm-up, ``m`` at ``max_steps``;
- constant: 1 after warm-up.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from lodit.training.config import TrainingConfig


def lr_factor(step: int, config: TrainingConfig) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    decay_steps = max(1, config.max_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    floor = config.min_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor` for ``config``.

    The factor is a plain closure (not a callable object) so that the scheduler's
    ``state_dict()`` holds only numbers and loads with ``torch.load(weights_only=True)``.
    """

    def factor(step: int) -> float:
        return lr_factor(step, config)

    return LambdaLR(optimizer, factor)
