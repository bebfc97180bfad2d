"""Building blocks shared by the tokenizer's encoders and decoders: a channels-last depthwise
convolution, the ConvNeXt block and stack (Vocos' backbone), and the weight initialisation.

Imports nothing from the rest of the tokenizer, so every component can use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError


class DepthwiseConv1d(nn.Module):
    """Per-channel (depthwise) 1-D convolution on channels-last input: ``(B, T, C) -> (B, T, C)``.

    Parameters are shaped like ``nn.Conv1d(C, C, kernel, groups=C)`` (``weight (C, 1, k)``, ``bias
    (C,)``). On CPU it is computed as ``k`` shifted multiply-adds: PyTorch's grouped-conv CPU kernels
    were tens of times slower than that for these sizes (torch 2.13, measured), while on GPU
    ``F.conv1d`` is the fast path. Both compute the same cross-correlation with zero "same" padding.
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise LoditError(f"ConvNeXt kernel (encoder.kernel / decoder.kernel) must be odd, got {kernel}")
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel // 2
        if x.device.type != "cpu":
            out = F.conv1d(x.transpose(1, 2), self.weight, self.bias, padding=pad, groups=x.shape[-1])
            return out.transpose(1, 2)
        frames = x.shape[1]
        padded = F.pad(x, (0, 0, pad, pad))  # (B, T + 2 * pad, C)
        taps = self.weight[:, 0, :].t()  # (k, C)
        out = torch.addcmul(self.bias, padded[:, :frames], taps[0])
        for j in range(1, self.kernel):
            out = torch.addcmul(out, padded[:, j : j + frames], taps[j])
        return out


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> MLP (GELU) -> layer scale, residual; channels-last ``(B, T, C)``."""

    def __init__(self, dim: int, intermediate_dim: int, kernel: int = 7, layer_scale: float = 1.0):
        super().__init__()
        self.dwconv = DepthwiseConv1d(dim, kernel)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.gamma * h


class ConvNeXtStack(nn.Module):
    """``depth`` ConvNeXt blocks on ``(B, T, C)``, layer scale ``1 / depth`` (keeps the residual
    stream's scale independent of depth at initialisation)."""

    def __init__(self, dim: int, intermediate_dim: int, depth: int, kernel: int = 7):
        super().__init__()
        scale = 1.0 / max(depth, 1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, kernel, scale) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) weights and zero biases for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear, DepthwiseConv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
