"""A single-codebook vector quantiser with EMA codebook updates, dead-code restart, the
straight-through estimator and a commitment loss (UniAudio-Token's quantiser, ANCHORS.md).

Per training forward, on the valid frames ``x`` (``mask``):

* each frame takes its nearest code (squared Euclidean distance): ``ids``;
* the codebook is not trained by gradients: it follows an exponential moving average of the
  frames assigned to each code (``decay``; counts Laplace-smoothed by ``eps`` so an unused code
  keeps its vector): ``N_k <- d N_k + (1-d) n_k``, ``S_k <- d S_k + (1-d) sum x``, ``e_k = S_k / N_k``;
* every ``restart_every`` training forwards, codes whose EMA count ``N_k`` fell below
  ``dead_threshold`` are *dead* and are restarted on frames drawn at random (with the global
  torch RNG, so a seeded run restarts the same codes) from the current batch;
* the output is ``x + (q - x).detach()`` (straight-through: the forward value is the code, the
  gradient is the identity), and the commitment loss ``commitment * mean((x - sg(q))^2)`` pulls
  the encoder output towards its codes.

In eval mode nothing is updated. With several processes the EMA statistics and the restart
candidates are all-reduced / broadcast, so every process keeps the same codebook.

Logged per forward (``stats``): ``usage`` (fraction of the codebook used by the batch),
``perplexity`` (``exp`` of the entropy of the batch's code histogram; the codebook size at best)
and ``restarted`` (codes restarted by this forward).

May import: torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class CodebookConfig:
    """``codebook:`` in a UniAudio-Token config (the paper's: 8192 x 1280, decay 0.95, commitment 0.25)."""

    size: int = 8192
    dim: int = 0  # code width; 0 = the encoder width (the paper quantises the 1280-dim stream directly)
    decay: float = 0.95
    commitment: float = 0.25
    restart_every: int = 10  # training forwards between dead-code checks (the reference code's interval)
    dead_threshold: float = 1.0  # EMA count below which a code is dead
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"codebook.size must be at least 2, got {self.size}")
        if self.dim < 0:
            raise ValueError(f"codebook.dim must be >= 0 (0 = the encoder width), got {self.dim}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"codebook.decay must be in [0, 1), got {self.decay}")
        if self.commitment < 0 or self.dead_threshold < 0 or self.eps <= 0:
            raise ValueError("codebook.commitment and dead_threshold must be >= 0 and eps > 0")
        if self.restart_every < 0:
            raise ValueError(f"codebook.restart_every must be >= 0 (0 = never), got {self.restart_every}")


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, T, D) straight-through codes
    ids: torch.Tensor  # (B, T) long
    commitment_loss: torch.Tensor  # scalar (already weighted by ``commitment``)
    stats: dict[str, float] = field(default_factory=dict)


class EMAVectorQuantizer(nn.Module):
    """One codebook of ``size`` codes of width ``dim`` (see the module docstring)."""

    def __init__(self, size: int, dim: int, *, decay: float = 0.95, commitment: float = 0.25,
                 restart_every: int = 10, dead_threshold: float = 1.0, eps: float = 1e-5):
        super().__init__()
        self.size, self.dim = int(size), int(dim)
        self.decay, self.commitment, self.eps = float(decay), float(commitment), float(eps)
        self.restart_every, self.dead_threshold = int(restart_every), float(dead_threshold)
        codebook = torch.randn(size, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(size))  # as if each code had been used once
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, config: CodebookConfig, dim: int) -> EMAVectorQuantizer:
        return cls(config.size, dim, decay=config.decay, commitment=config.commitment,
                   restart_every=config.restart_every, dead_threshold=config.dead_threshold, eps=config.eps)

    def codebook_hash(self) -> str:
        """A short content hash of the codebook (what a token cache records as its codebook identity)."""
        data = self.codebook.detach().float().cpu().contiguous()
        return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Ids ``(...)`` of the nearest codes of ``x (..., D)``."""
        flat = x.reshape(-1, self.dim).float()
        codes = self.codebook.float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
        return distances.argmin(1).reshape(x.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors ``(..., D)`` of ``ids``."""
        return F.embedding(ids, self.codebook)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantise ``x (B, T, D)``; ``mask (B, T)`` True on valid frames (padding is never counted)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"the quantiser expects {self.dim}-dim frames, got {tuple(x.shape)}")
        valid = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        ids = self.nearest(x.detach())  # (B, T)
        frames = x.detach()[valid].float()  # (N, D)
        chosen = ids[valid]  # (N,)
        restarted = 0
        if self.training and frames.shape[0] > 0:
            restarted = self._update(frames, chosen)
            ids = self.nearest(x.detach())  # the codebook moved: assign to its new codes
            chosen = ids[valid]
        quantized = self.lookup(ids).to(x.dtype)  # (B, T, D)
        weights = valid.to(x.dtype)[..., None]
        error = ((x - quantized.detach()).pow(2) * weights).sum() / (weights.sum() * self.dim).clamp_min(1.0)
        out = x + (quantized - x).detach()
        counts = torch.bincount(chosen, minlength=self.size).float()
        probs = counts / counts.sum().clamp_min(1.0)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
        stats = {"usage": float((counts > 0).float().mean()), "perplexity": float(entropy.exp()),
                 "restarted": float(restarted)}
        return QuantizerOutput(out, ids, self.commitment * error, stats)

    @torch.no_grad()
    def _update(self, frames: torch.Tensor, ids: torch.Tensor) -> int:
        onehot = F.one_hot(ids, self.size).float()  # (N, K)
        counts = onehot.sum(0)  # (K,)
        sums = onehot.t() @ frames  # (K, D)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed.clamp_min(self.eps)[:, None])
        self.updates.add_(1)
        if self.restart_every and int(self.updates) % self.restart_every == 0:
            return self._restart_dead(frames)
        return 0

    @torch.no_grad()
    def _restart_dead(self, frames: torch.Tensor) -> int:
        dead = (self.cluster_size < self.dead_threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        picks = torch.randint(0, frames.shape[0], (dead.numel(),)).to(frames.device)
        fresh = frames[picks]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(fresh, src=0)
        self.codebook[dead] = fresh
        # a restarted code starts as if it had been used once (threshold), so it is not restarted again at once
        self.cluster_size[dead] = self.dead_threshold
        self.embed_sum[dead] = fresh * self.dead_threshold
        return int(dead.numel())
