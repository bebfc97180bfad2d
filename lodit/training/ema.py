"""Exponential moving average (EMA) of a module's weights, for evaluation and export.

The shadow holds one tensor per entry of ``module.state_dict()``: floating-point parameters are
averaged (kept in float32 whatever the module's dtype), everything else (buffers such as norm
statistics, integer parameters) is copied from the module at each update. Its ``state_dict()``
therefore has exactly the module's keys and loads into the module like a normal checkpoint —
that is what ``ema.safetensors`` holds.

Update rule, with ``d`` the decay: ``shadow <- d * shadow + (1 - d) * param``.
With ``warmup=True`` the decay after ``n`` earlier updates is ``min(decay, (1 + n) / (10 + n))``,
so the average forgets the random initialisation quickly early in training; with the default
``warmup=False`` it is ``decay`` from the first update.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """Shadow weights of ``module`` tracking it with decay ``decay`` (see the module docstring)."""

    def __init__(self, module: nn.Module, decay: float, *, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        entries = module.state_dict(keep_vars=True)
        self.averaged = [k for k, v in entries.items() if isinstance(v, nn.Parameter) and v.is_floating_point()]
        averaged = set(self.averaged)
        self.copied = [k for k in entries if k not in averaged]
        self.shadow: dict[str, torch.Tensor] = {}
        for key, value in entries.items():
            value = value.detach()
            self.shadow[key] = value.float().clone() if key in averaged else value.clone()

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow towards ``module``'s current weights by one step."""
        entries = module.state_dict(keep_vars=True)
        weight = 1.0 - self.current_decay()
        targets = [self.shadow[k] for k in self.averaged]
        sources = [entries[k].detach().to(self.shadow[k].dtype) for k in self.averaged]
        if targets:
            # one fused kernel per dtype/device group instead of one launch per tensor
            torch._foreach_lerp_(targets, sources, weight)
        for key in self.copied:
            self.shadow[key].copy_(entries[key].detach())
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights, keyed like ``module.state_dict()``."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the shadow weights; keys and shapes must match exactly."""
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match: missing {missing}, unexpected {unexpected}")
        for key, value in state.items():
            if value.shape != self.shadow[key].shape:
                raise ValueError(f"EMA state {key}: shape {tuple(value.shape)} != {tuple(self.shadow[key].shape)}")
            self.shadow[key].copy_(value)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the shadow weights into ``module`` (overwriting its own)."""
        module.load_state_dict(self.shadow)

    @contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """Evaluate with the EMA weights inside the ``with`` block; the module's own come back after."""
        with torch.no_grad():
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                module.load_state_dict(saved)
