"""Bottlenecks: what shapes the latent between encoder and decoder, chosen by name.

Owns :data:`BOTTLENECKS`, :class:`BottleneckConfig`, :class:`BottleneckOutput`,
:func:`build_bottleneck` and three variants:

* ``noise_norm`` (F3-style) — normalise to zero mean / unit variance, per frame over channels
  (``axis="channel"``, the default) or per channel over time (``axis="time"``), optionally followed by
  a learnable per-channel affine (off by default); in training only, add ``alpha * eps`` with
  ``eps ~ N(0, I)`` and ``alpha ~ U(0, gamma)`` drawn once per example. No loss term: the scale is
  fixed by construction, the noise makes the decoder robust to the errors a generator will make.
* ``vae`` — a Linear maps the encoder width to ``2 * latent_dim`` (mean and log-variance); the
  log-variance is clamped to ``±logvar_clamp``; training samples ``mu + sigma * eps``, inference
  returns ``mu``; reports ``kl`` (see :func:`gaussian_kl`).
* ``identity`` — passes the encoder output through.

Every bottleneck's ``forward(z, stochastic=None)`` is stochastic when ``stochastic`` is true, or
when it is ``None`` and the module is in training mode; ``stochastic=False`` is the deterministic
path that :meth:`Tokenizer.encode` uses whatever the module's mode. Losses are unweighted; the
tokenizer loss applies ``kl_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lodit.errors import LoditError
from lodit.registry import Registry


@dataclass
class BottleneckConfig:
    name: str = "noise_norm"  # noise_norm | vae | identity
    axis: Literal["channel", "time"] = (
        "channel"  # noise_norm: normalise each frame over channels, or each channel over time
    )
    gamma: float = 1.0  # noise_norm: training noise scale alpha ~ U(0, gamma); 0 disables the noise
    affine: bool = False  # noise_norm: learnable per-channel scale and shift after normalising
    eps: float = 1e-5  # noise_norm: added to the std before dividing
    kl_weight: float = 1e-2  # vae: weight of the KL term in the tokenizer loss
    logvar_clamp: float = 20.0  # vae: log-variance is clamped to [-logvar_clamp, logvar_clamp]

    def __post_init__(self):
        if self.gamma < 0:
            raise ValueError(f"bottleneck.gamma must be >= 0, got {self.gamma}")
        if self.logvar_clamp <= 0:
            raise ValueError(f"bottleneck.logvar_clamp must be > 0, got {self.logvar_clamp}")


@dataclass
class BottleneckOutput:
    latent: torch.Tensor  # (B, T, latent_dim)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted, e.g. {"kl": ...}
    stats: dict[str, float] = field(default_factory=dict)  # for logging


BOTTLENECKS: Registry[type] = Registry("bottleneck")


def build_bottleneck(cfg: BottleneckConfig, in_dim: int, latent_dim: int) -> nn.Module:
    """The bottleneck named by ``cfg.name``, mapping ``(B, T, in_dim)`` to ``(B, T, latent_dim)``."""
    return BOTTLENECKS.get(cfg.name)(cfg, in_dim, latent_dim)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` in nats per frame: summed over channels (last axis),
    averaged over every other axis: ``mean(0.5 * sum_D(mu² + exp(logvar) - 1 - logvar))``."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1).mean()


def _stats(**values: torch.Tensor) -> dict[str, float]:
    # One device sync for all logged numbers.
    numbers = torch.stack([v.detach().float() for v in values.values()]).tolist()
    return dict(zip(values, numbers))


def _require_same_width(name: str, in_dim: int, latent_dim: int) -> None:
    if in_dim != latent_dim:
        raise LoditError(
            f"bottleneck {name!r} keeps the encoder width ({in_dim}) but tokenizer.latent_dim is {latent_dim}; "
            f"make the encoder output latent_dim channels or use the 'vae' bottleneck"
        )


@BOTTLENECKS.register("noise_norm")
class NoiseNormBottleneck(nn.Module):
    """Normalise (zero mean, unit variance along ``axis``), optional affine, training-only noise."""

    def __init__(self, cfg: BottleneckConfig, in_dim: int, latent_dim: int):
        super().__init__()
        _require_same_width("noise_norm", in_dim, latent_dim)
        self.reduce_dim = -1 if cfg.axis == "channel" else -2  # channels or frames of (B, T, D)
        self.gamma, self.eps = cfg.gamma, cfg.eps
        self.weight = nn.Parameter(torch.ones(latent_dim)) if cfg.affine else None
        self.bias = nn.Parameter(torch.zeros(latent_dim)) if cfg.affine else None

    def forward(self, z: torch.Tensor, stochastic: bool | None = None) -> BottleneckOutput:
        stochastic = self.training if stochastic is None else stochastic
        std, mean = torch.std_mean(z, dim=self.reduce_dim, keepdim=True, correction=0)
        latent = (z - mean) / (std + self.eps)
        if self.weight is not None:
            latent = latent * self.weight + self.bias
        alpha = torch.zeros((), device=z.device)
        if stochastic and self.gamma > 0:
            alpha = torch.rand(z.shape[0], 1, 1, device=z.device, dtype=z.dtype) * self.gamma  # one per example
            latent = latent + alpha * torch.randn_like(latent)
        return BottleneckOutput(latent=latent, stats=_stats(input_std=std.mean(), noise_alpha=alpha.mean()))


@BOTTLENECKS.register("vae")
class VAEBottleneck(nn.Module):
    """``Linear(in_dim -> 2 * latent_dim)`` gives ``mu, logvar``; sample in training, ``mu`` otherwise."""

    def __init__(self, cfg: BottleneckConfig, in_dim: int, latent_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, 2 * latent_dim)
        self.logvar_clamp = cfg.logvar_clamp

    def forward(self, z: torch.Tensor, stochastic: bool | None = None) -> BottleneckOutput:
        stochastic = self.training if stochastic is None else stochastic
        mu, logvar = self.proj(z).chunk(2, dim=-1)  # (B, T, latent_dim) each
        logvar = logvar.clamp(-self.logvar_clamp, self.logvar_clamp)
        latent = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if stochastic else mu
        kl = gaussian_kl(mu, logvar)
        return BottleneckOutput(
            latent=latent,
            losses={"kl": kl},
            stats=_stats(kl=kl, mu_std=mu.std(correction=0), sigma=torch.exp(0.5 * logvar).mean()),
        )


@BOTTLENECKS.register("identity")
class IdentityBottleneck(nn.Module):
    """The encoder output is the latent."""

    def __init__(self, cfg: BottleneckConfig, in_dim: int, latent_dim: int):
        super().__init__()
        _require_same_width("identity", in_dim, latent_dim)

    def forward(self, z: torch.Tensor, stochastic: bool | None = None) -> BottleneckOutput:
        return BottleneckOutput(latent=z, stats=_stats(latent_std=z.std(correction=0)))
