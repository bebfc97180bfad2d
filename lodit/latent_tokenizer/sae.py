"""SAE (semantic-acoustic equilibrium): a content-aware gate that injects shallow-layer acoustic
detail into a deep semantic stream (UniAudio-Token, ANCHORS.md).

For frames of a deep layer ``H_deep`` and a shallow layer ``H_shallow`` of the same encoder (both
``(B, T, D)``)::

    gamma = sigmoid(MLP_gate([H_deep; H_shallow]))          # (B, T, D), per channel and frame
    H     = LayerNorm(H_deep + gamma * MLP_adapter(H_shallow))

``MLP_gate`` is ``Linear(2D, gate_hidden) -> tanh -> Linear(gate_hidden, D)`` and ``MLP_adapter``
``Linear(D, adapter_hidden) -> GELU -> Dropout -> Linear(adapter_hidden, D)`` (the paper's sizes at
D = 1280: 2560 -> 1280 -> 1280 and 1280 -> 1280 -> 1280, dropout 0.1).

Switched off (``enabled=False``, the ablation) the module is ``LayerNorm(H_deep)``: exactly what the
gate gives when it is closed (``gamma = 0``), so the two arms differ only in the injected detail.
:meth:`SAE.forward` also returns ``gamma``; its mean (over valid frames) is what training logs
and ``lodit evaluate`` reports as ``sae_gate``.

May import: torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SAEConfig:
    """``sae:`` in a UniAudio-Token config. Hidden widths of 0 mean "the stream width"."""

    enabled: bool = True
    shallow_layer: int = 3  # hidden-state index of the shallow (acoustic) stream; the paper's is 3
    deep_layer: int = -1  # the deep (semantic) stream; -1 = the encoder's final output
    gate_hidden: int = 0
    adapter_hidden: int = 0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.gate_hidden < 0 or self.adapter_hidden < 0:
            raise ValueError("sae.gate_hidden and sae.adapter_hidden must be >= 0 (0 = the stream width)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sae.dropout must be in [0, 1), got {self.dropout}")


class SAE(nn.Module):
    """The gated fusion of a deep and a shallow stream (see the module docstring)."""

    def __init__(self, dim: int, *, enabled: bool = True, gate_hidden: int = 0, adapter_hidden: int = 0,
                 dropout: float = 0.1):
        super().__init__()
        self.dim = int(dim)
        self.enabled = bool(enabled)
        self.norm = nn.LayerNorm(dim)
        if self.enabled:
            gate_hidden = gate_hidden or dim
            adapter_hidden = adapter_hidden or dim
            self.gate = nn.Sequential(nn.Linear(2 * dim, gate_hidden), nn.Tanh(), nn.Linear(gate_hidden, dim))
            self.adapter = nn.Sequential(nn.Linear(dim, adapter_hidden), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(adapter_hidden, dim))

    @classmethod
    def from_config(cls, config: SAEConfig, dim: int) -> SAE:
        return cls(dim, enabled=config.enabled, gate_hidden=config.gate_hidden,
                   adapter_hidden=config.adapter_hidden, dropout=config.dropout)

    def forward(self, deep: torch.Tensor, shallow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``deep``, ``shallow`` ``(B, T, D)`` -> ``(H (B, T, D), gamma (B, T, D))``; ``gamma`` is
        all zeros when the SAE is switched off (``shallow`` may then be None)."""
        if not self.enabled:
            return self.norm(deep), torch.zeros_like(deep)
        if shallow is None or shallow.shape != deep.shape:
            got = None if shallow is None else tuple(shallow.shape)
            raise ValueError(f"SAE needs a shallow stream shaped like the deep one {tuple(deep.shape)}, got {got}")
        gamma = torch.sigmoid(self.gate(torch.cat([deep, shallow], dim=-1)))  # (B, T, D)
        return self.norm(deep + gamma * self.adapter(shallow)), gamma


def mean_gate(gamma: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``gamma (B, T, D)`` over the valid frames of ``mask (B, T)`` (all frames without one)."""
    if mask is None:
        return gamma.mean()
    weights = mask.to(gamma.dtype)[..., None]  # (B, T, 1)
    return (gamma * weights).sum() / (weights.sum() * gamma.shape[-1]).clamp_min(1.0)
