"""The flow-matching training objective (rectified flow, lodit convention ``t = 1`` noise, ``t = 0`` data).

For a clean latent ``x0``, noise ``eps ~ N(0, I)`` and a time ``t``::

    x_t = (1 - t)·x0 + t·eps          (interpolate)
    v   = dx_t/dt = eps - x0          (velocity_target; the network predicts it)

so sampling integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``
(:mod:`lodit.samplers`). This module owns everything a DiT training step needs besides the
network: where training times are drawn (:data:`TIMESTEP_SAMPLERS`), the masked loss, condition
dropout for classifier-free guidance, and latent normalisation with the cache's per-channel
statistics. :class:`FlowMatching` bundles them behind a :class:`FlowMatchingConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from lodit.data import latent_cache
from lodit.errors import LoditError
from lodit.registry import Registry
from lodit.samplers.schedules import length_dependent_shift, shift_time


@dataclass
class FlowMatchingConfig:
    timestep_sampler: str = "logit_normal"  # uniform | logit_normal | shifted | length_shift
    logit_mean: float = 0.0  # logit-normal: t = sigmoid(N(logit_mean, logit_std^2))
    logit_std: float = 1.0
    shift: float = 1.0  # shifted: fixed shift (see lodit.samplers.schedules.shift_time)
    shift_base: Literal["uniform", "logit_normal"] = "logit_normal"  # what shifted/length_shift warp
    base_shift: float = 0.5  # length_shift: log-shift at base_seq_len frames
    max_shift: float = 1.15  # length_shift: log-shift at max_seq_len frames
    base_seq_len: int = 256
    max_seq_len: int = 4096
    cond_dropout: float = 0.2  # probability of replacing a sample's condition by the null one


# A timestep sampler: (cfg, batch, seq_len, generator) -> (batch,) float64 times in [0, 1] on the
# generator's device. ``seq_len`` is an int or a (batch,) tensor of valid lengths.
TimestepSampler = Callable[
    [FlowMatchingConfig, int, "int | torch.Tensor", torch.Generator | None], torch.Tensor
]
TIMESTEP_SAMPLERS: Registry[TimestepSampler] = Registry("timestep sampler")


def _draw_device(generator: torch.Generator | None) -> torch.device:
    # Draw on the generator's device so a seed gives the same numbers whatever device trains.
    return generator.device if generator is not None else torch.device("cpu")


@TIMESTEP_SAMPLERS.register("uniform")
def uniform_timesteps(cfg, batch, seq_len, generator):
    """``t ~ U(0, 1)``."""
    return torch.rand(batch, generator=generator, device=_draw_device(generator), dtype=torch.float64)


@TIMESTEP_SAMPLERS.register("logit_normal")
def logit_normal_timesteps(cfg, batch, seq_len, generator):
    """``t = sigmoid(u)``, ``u ~ N(logit_mean, logit_std²)``: concentrates training on middle times
    (SD3; UniFlow-Audio uses (0, 1))."""
    if cfg.logit_std <= 0:
        raise LoditError(f"logit_std must be > 0, got {cfg.logit_std}")
    u = torch.randn(batch, generator=generator, device=_draw_device(generator), dtype=torch.float64)
    return torch.sigmoid(cfg.logit_mean + cfg.logit_std * u)


@TIMESTEP_SAMPLERS.register("shifted")
def shifted_timesteps(cfg, batch, seq_len, generator):
    """``cfg.shift_base`` times warped by a fixed ``shift_time(t, cfg.shift)``."""
    base = TIMESTEP_SAMPLERS.get(cfg.shift_base)(cfg, batch, seq_len, generator)
    return shift_time(base, cfg.shift)


@TIMESTEP_SAMPLERS.register("length_shift")
def length_shifted_timesteps(cfg, batch, seq_len, generator):
    """``cfg.shift_base`` times warped by a shift that grows with each sample's valid length
    (:func:`lodit.samplers.schedules.length_dependent_shift`, defaults as in Flux)."""
    base = TIMESTEP_SAMPLERS.get(cfg.shift_base)(cfg, batch, seq_len, generator)
    shift = length_dependent_shift(
        seq_len,
        base_shift=cfg.base_shift,
        max_shift=cfg.max_shift,
        base_seq_len=cfg.base_seq_len,
        max_seq_len=cfg.max_seq_len,
    ).to(base.device)
    return shift_time(base, shift)


def sample_timesteps(
    cfg: FlowMatchingConfig,
    batch: int,
    seq_len: int | torch.Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(batch,)`` float32 training times in ``[0, 1]`` from ``cfg.timestep_sampler``."""
    if cfg.shift_base not in ("uniform", "logit_normal"):
        raise LoditError(f"shift_base must be 'uniform' or 'logit_normal', got {cfg.shift_base!r}")
    t = TIMESTEP_SAMPLERS.get(cfg.timestep_sampler)(cfg, batch, seq_len, generator)
    return t.to(device=device, dtype=torch.float32)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))  # (B, 1, ..., 1)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t)·x0 + t·eps`` with ``t`` of shape ``(B,)``."""
    t = _per_sample(t, x0)
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The regression target ``eps - x0`` (the time derivative of :func:`interpolate`)."""
    return eps - x0


def flow_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked MSE between predicted and target velocity, computed in float32.

    ``pred``/``target`` are ``(B, T, D)``; ``mask`` is ``(B, T)`` with True on valid frames.
    Normalisation: the summed squared error over valid frames divided by
    ``(number of valid frames in the batch) × D``, i.e. the mean over every valid element, so each
    valid frame weighs the same whatever clip it belongs to and padding contributes nothing.
    Without a mask it is the plain mean.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    squared = (pred.float() - target.float()).pow(2)  # (B, T, D)
    if mask is None:
        return squared.mean()
    valid = mask.to(squared.dtype).unsqueeze(-1)  # (B, T, 1)
    count = valid.sum() * squared.shape[-1]
    return (squared * valid).sum() / count.clamp_min(1.0)


def condition_dropout_mask(
    batch: int,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    *,
    key: str = "cond_dropout",
) -> torch.Tensor:
    """``(batch,)`` bool, True where the condition is dropped (each independently with prob. ``p``).

    Training on dropped conditions teaches the same network the unconditional velocity that
    classifier-free guidance needs at sampling time. The same draw drops a TTS audio prompt alone
    (``tts.prompt_drop_prob``); ``key`` names the setting in the error for a bad ``p``.
    """
    if not 0.0 <= p <= 1.0:
        raise LoditError(f"{key} must be in [0, 1], got {p}")
    u = torch.rand(batch, generator=generator, device=_draw_device(generator))
    return (u < p).to(device)


class LatentStats:
    """Per-channel latent statistics (a latent cache's ``mean``/``std``) and the normalisation
    they define: the DiT trains on ``(x - mean) / std`` so it sees roughly unit-variance latents
    whatever the tokenizer; ``denormalize`` undoes it before decoding. The arithmetic (including
    the floor for dead channels) is the cache's own, :mod:`lodit.data.latent_cache`.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if self.mean.shape != self.std.shape:
            raise LoditError(
                f"latent stats: mean has {self.mean.numel()} channels but std has {self.std.numel()}"
            )

    @classmethod
    def from_cache(cls, cache) -> LatentStats:
        """The stats of a :class:`lodit.data.latent_cache.LatentCache`."""
        return cls(cache.mean, cache.std)

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.channels:
            raise LoditError(
                f"latents have {x.shape[-1]} channels but the latent stats have {self.channels}; "
                f"use the stats of the cache these latents came from"
            )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return latent_cache.normalize(x, self.mean, self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return latent_cache.denormalize(x, self.mean, self.std)


class TrainingInputs(NamedTuple):
    x_t: torch.Tensor  # (B, T, D) noisy latents
    t: torch.Tensor  # (B,) float32 times
    target: torch.Tensor  # (B, T, D) velocity target eps - x0


class FlowMatching:
    """The flow-matching objective for one training run: times, noise, target, loss, CFG dropout."""

    def __init__(self, cfg: FlowMatchingConfig, stats: LatentStats | None = None):
        if not 0.0 <= cfg.cond_dropout <= 1.0:
            raise LoditError(f"cond_dropout must be in [0, 1], got {cfg.cond_dropout}")
        TIMESTEP_SAMPLERS.get(cfg.timestep_sampler)  # fail at construction on an unknown name
        self.cfg = cfg
        self.stats = stats

    def training_inputs(
        self,
        x0: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> TrainingInputs:
        """Noisy input, time and target for clean latents ``x0`` ``(B, T, D)``.

        ``x0`` is normalised with the latent stats first (when given). ``mask`` ``(B, T)`` gives the
        valid lengths that ``length_shift`` uses. Times are drawn before noise, both from
        ``generator`` (on its device), so a seeded generator reproduces the batch exactly.
        """
        if self.stats is not None:
            x0 = self.stats.normalize(x0)
        batch, frames = x0.shape[0], x0.shape[1]
        seq_len = mask.sum(dim=1).cpu() if mask is not None else frames
        t = sample_timesteps(self.cfg, batch, seq_len, generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=_draw_device(generator), dtype=x0.dtype)
        eps = eps.to(x0.device)
        return TrainingInputs(interpolate(x0, eps, t), t, velocity_target(x0, eps))

    def loss(self, pred: torch.Tensor, target: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        return flow_matching_loss(pred, target, mask)

    def dropout_mask(self, batch: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """``(batch,)`` bool, True where a sample's condition is replaced by the null condition."""
        return condition_dropout_mask(batch, self.cfg.cond_dropout, generator, device)
