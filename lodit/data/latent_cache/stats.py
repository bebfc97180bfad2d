"""Per-channel latent statistics: the running mean and std the writer accumulates, and the
normalisation the DiT trains and samples with (``normalize`` / ``denormalize``).
"""

from __future__ import annotations

import torch

STD_FLOOR = 1e-5  # dead channels (std 0) are divided by this instead of by zero


def normalize(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(latents - mean) / std`` per channel (last axis); inverse of :func:`denormalize`."""
    mean = mean.to(latents.device, latents.dtype)
    std = std.to(latents.device, latents.dtype).clamp_min(STD_FLOOR)
    return (latents - mean) / std


def denormalize(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``latents * std + mean`` per channel: back to the tokenizer's scale before decoding."""
    mean = mean.to(latents.device, latents.dtype)
    std = std.to(latents.device, latents.dtype).clamp_min(STD_FLOOR)
    return latents * std + mean


class RunningStats:
    """Exact streaming per-channel mean / variance in float64 (Chan et al. pairwise merge)."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dtype=torch.float64)  # sum of squared deviations from the mean

    def update(self, frames: torch.Tensor) -> None:
        """Merge a block of frames ``(T, D)``."""
        block = frames.detach().to("cpu", torch.float64)
        n = block.shape[0]
        if n == 0:
            return
        block_mean = block.mean(dim=0)
        block_m2 = ((block - block_mean) ** 2).sum(dim=0)
        total = self.count + n
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + block_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per channel."""
        return (self.m2 / max(self.count, 1)).sqrt()
