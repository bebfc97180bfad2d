"""DiT building blocks: conditioning embeddings, the gated MLP, the adaLN-Zero block, the final layer.

- :func:`sinusoidal_embedding` / :class:`ScalarEmbedding`: a real scalar per sample (flow time,
  target duration) -> sinusoidal features -> MLP -> a ``width`` vector added to the global
  conditioning vector.
- :class:`GatedMLP`: ``out(act(a) * b)`` with ``[a, b] = in(x)`` (GEGLU: GELU, SwiGLU: SiLU).
  **Hidden size convention** (:func:`gated_hidden_size`): a gated MLP has three matrices instead of
  two, so ``mlp_ratio`` is scaled by 2/3 to keep the parameter count of a plain ``ratio·width`` MLP,
  then rounded up to a multiple of 64 for fast matmuls: width 512, ratio 4 -> 1408; ratio 6 ->
  2048 (= a 4·width gated MLP, as diffusers' Stable Audio DiT uses).
- :class:`DiTBlock`: adaLN-Zero (DiT): from the global vector ``c`` each block regresses shift /
  scale / gate for self-attention and for the MLP; the regression layer is zero-initialised, so at
  init every gate is 0 and the block is the identity. Cross-attention to the text is not modulated
  (as in PixArt-α): it has a plain pre-LayerNorm and a zero-initialised output projection, which
  keeps the identity-at-init property.
- :class:`FinalLayer`: adaLN (shift, scale) + Linear, both zero-initialised: the DiT's output is
  exactly zero at init.
- :class:`SkipFusion`: the U-DiT long skip, ``Linear([h, skip])`` initialised to pass ``h`` through.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lodit.dit.attention import CrossAttention, Rotary, SelfAttention

MlpKind = Literal["geglu", "swiglu"]


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``values`` ``(B,)`` -> ``(B, dim)``: ``[cos(v·f_i), sin(v·f_i)]`` with geometric ``f_i``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    angles = values.to(torch.float32)[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class ScalarEmbedding(nn.Module):
    """A per-sample scalar -> ``width`` vector: ``MLP(sinusoid(scale · value))``.

    ``scale`` maps the scalar's natural range onto the sinusoid's useful range (roughly 0..1000):
    1000 for a flow time in [0, 1], 10 for a duration in seconds.
    """

    def __init__(self, width: int, scale: float, frequency_dim: int = 256):
        super().__init__()
        self.scale = scale
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(values * self.scale, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def gated_hidden_size(width: int, mlp_ratio: float) -> int:
    """Hidden width of a gated MLP: ``mlp_ratio · width · 2/3`` rounded up to a multiple of 64."""
    return max(64, math.ceil(mlp_ratio * width * 2 / 3 / 64) * 64)


class GatedMLP(nn.Module):
    """GEGLU / SwiGLU feed-forward with one fused input projection."""

    def __init__(self, width: int, hidden: int, kind: MlpKind = "swiglu", dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if kind not in ("geglu", "swiglu"):
            raise ValueError(f"unknown gated MLP kind {kind!r}; choose geglu or swiglu")
        self.kind = kind
        self.inp = nn.Linear(width, 2 * hidden, bias=bias)
        self.out = nn.Linear(hidden, width, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.inp(x).chunk(2, dim=-1)
        # Exact (erf) GELU: on CPU the tanh approximation measured 2x slower forward + backward.
        gate = F.gelu(gate) if self.kind == "geglu" else F.silu(gate)
        return self.out(self.dropout(gate * value))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x · (1 + scale) + shift``; ``shift``/``scale`` ``(B, 1, W)`` broadcast over tokens."""
    return torch.addcmul(shift, x, 1 + scale)


class DiTBlock(nn.Module):
    """Self-attention (adaLN-Zero) -> cross-attention to text (pre-LN) -> gated MLP (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, *, mlp_hidden: int, mlp: MlpKind, qk_norm: bool,
                 text_dim: int, backend: str, dropout: float, bias: bool = True):
        super().__init__()
        self.width = width
        # No affine: adaLN provides the per-sample scale and shift.
        self.attn_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads, qk_norm=qk_norm, bias=bias, backend=backend, dropout=dropout)
        self.cross_norm: nn.LayerNorm | None = None
        self.cross: CrossAttention | None = None
        if text_dim > 0:
            self.cross_norm = nn.LayerNorm(width, eps=1e-6)
            self.cross = CrossAttention(width, heads, text_dim, qk_norm=qk_norm, bias=bias,
                                        backend=backend, dropout=dropout)
        self.mlp_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = GatedMLP(width, mlp_hidden, mlp, dropout, bias=bias)
        # silu(c) -> shift/scale/gate for attention and MLP.
        self.modulation = nn.Linear(width, 6 * width)
        self.reset_zero_init()

    def reset_zero_init(self) -> None:
        """adaLN-Zero: zero modulation (gates 0) and zero cross-attention output -> identity block."""
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        if self.cross is not None:
            nn.init.zeros_(self.cross.out.weight)
            if self.cross.out.bias is not None:
                nn.init.zeros_(self.cross.out.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, rotary: Rotary | None,
                key_mask: torch.Tensor | None, text: torch.Tensor | None,
                text_mask: torch.Tensor | None) -> torch.Tensor:
        """``h`` ``(B, N, W)``; ``cond`` = ``silu(c)`` ``(B, W)``; returns ``(B, N, W)``."""
        mod = self.modulation(cond).unsqueeze(1)  # (B, 1, 6W)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)  # each (B, 1, W)
        attn = self.attn(modulate(self.attn_norm(h), shift_a, scale_a), rotary, key_mask)
        h = torch.addcmul(h, gate_a, attn)
        if self.cross is not None:
            h = h + self.cross(self.cross_norm(h), text, text_mask)
        mlp = self.mlp(modulate(self.mlp_norm(h), shift_m, scale_m))
        return torch.addcmul(h, gate_m, mlp)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + Linear to the patch's latent values, zero-initialised."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, out_dim)
        self.reset_zero_init()

    def reset_zero_init(self) -> None:
        for layer in (self.modulation, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).unsqueeze(1).chunk(2, dim=-1)  # each (B, 1, W)
        return self.proj(modulate(self.norm(h), shift, scale))


class SkipFusion(nn.Module):
    """U-DiT long skip: ``Linear([h, skip]) -> W``, initialised to ``h`` (identity, skip ignored)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.proj = nn.Linear(2 * width, width)
        self.reset_identity()

    def reset_identity(self) -> None:
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, : self.width].copy_(torch.eye(self.width))
            self.proj.bias.zero_()

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat((h, skip), dim=-1))
