"""Statistics of a latent space: per-channel mean/std, effective rank, variance in the top-k components.

These describe *how much of its width a latent space uses*, the question behind the 1280-dim vs
128-dim comparison. Frames are treated as samples: a set of clips ``(T_i, D)`` is streamed clip by
clip into an exact float64 mean and scatter matrix (Chan et al.'s pairwise update), so memory is
O(D²) whatever the dataset size.

- **Effective rank** (Roy & Vetterli, "The effective rank: a measure of effective
  dimensionality", EUSIPCO 2007): ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j`` the normalised
  singular values of the *centred* frame matrix (``σ_i ∝ sqrt(λ_i)`` for the covariance
  eigenvalues ``λ_i``). Centring keeps the mean from counting as one extra direction. It equals D
  for isotropic data and is at most r for rank-r data.
- **Top-k variance fraction**: ``Σ_{i<k} λ_i / Σ_i λ_i`` over the sorted covariance eigenvalues
  (the share of variance PCA to k dimensions keeps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from lodit.errors import LoditError
from lodit.eval.results import MetricResult

DEFAULT_TOPK = (1, 8, 32, 128, 512)


class ScatterAccumulator:
    """Streaming float64 mean and scatter matrix ``Σ (x - mean)(x - mean)ᵀ`` of ``(T, D)`` frames."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim)
        self.scatter = np.zeros((dim, dim))

    def update(self, frames: torch.Tensor | np.ndarray) -> None:
        block = (
            frames.detach().cpu().double().numpy()
            if isinstance(frames, torch.Tensor)
            else np.asarray(frames, np.float64)
        )
        block = block.reshape(-1, block.shape[-1])  # (T, D)
        if block.shape[1] != self.dim:
            raise LoditError(f"latent statistics: got {block.shape[1]}-dim frames after {self.dim}-dim ones")
        if block.shape[0] == 0:
            return
        if not np.isfinite(block).all():
            raise LoditError("latent statistics: the latents contain NaN or inf values")
        n_b = block.shape[0]
        mean_b = block.mean(0)
        centred = block - mean_b
        scatter_b = centred.T @ centred
        total = self.count + n_b
        delta = mean_b - self.mean
        self.scatter += scatter_b + np.outer(delta, delta) * (self.count * n_b / total)
        self.mean += delta * (n_b / total)
        self.count = total

    def covariance(self) -> np.ndarray:
        """Population covariance ``(D, D)``."""
        return self.scatter / max(self.count, 1)


def latent_statistics(
    latents: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    *,
    topk: Iterable[int] = DEFAULT_TOPK,
) -> dict[str, Any]:
    """Statistics of ``(N, D)`` frames or an iterable of ``(T, D)`` clips.

    Returns ``mean`` and ``std`` (``(D,)`` float32 tensors, population std), ``effective_rank``,
    ``topk_variance_fraction`` (``{k: fraction}`` for each ``k <= D`` in ``topk``, plus ``D``),
    ``eigenvalues`` (``(D,)`` covariance spectrum, descending), ``n_frames`` and ``dim``.
    """
    if isinstance(latents, (torch.Tensor, np.ndarray)):
        if latents.ndim != 2:
            raise LoditError(
                f"latent statistics need (N, D) frames or an iterable of (T, D) clips, got {tuple(latents.shape)}"
            )
        clips: Iterable = [latents]
    else:
        clips = latents
    accumulator: ScatterAccumulator | None = None
    for clip in clips:
        if accumulator is None:
            accumulator = ScatterAccumulator(int(clip.shape[-1]))
        accumulator.update(clip)
    if accumulator is None or accumulator.count < 2:
        raise LoditError("latent statistics need at least 2 frames")

    covariance = accumulator.covariance()
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0.0, None)  # descending, round-off negatives -> 0
    dim = accumulator.dim
    ks = sorted({k for k in topk if 1 <= k <= dim} | {dim})
    total = eigenvalues.sum()
    fractions = {k: float(eigenvalues[:k].sum() / total) if total > 0 else float("nan") for k in ks}
    return {
        "mean": torch.from_numpy(accumulator.mean).float(),
        "std": torch.from_numpy(np.sqrt(np.diag(covariance))).float(),
        "effective_rank": effective_rank_from_eigenvalues(eigenvalues),
        "topk_variance_fraction": fractions,
        "eigenvalues": torch.from_numpy(eigenvalues.copy()),
        "n_frames": accumulator.count,
        "dim": dim,
    }


def effective_rank_from_eigenvalues(eigenvalues: np.ndarray) -> float:
    """Roy & Vetterli's effective rank from covariance eigenvalues (singular values = their roots)."""
    singular = np.sqrt(np.clip(np.asarray(eigenvalues, np.float64), 0.0, None))
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular[singular > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def latent_cache_statistics(cache_dir: str, *, topk: Iterable[int] = DEFAULT_TOPK) -> dict[str, Any]:
    """:func:`latent_statistics` over every clip of a latent cache, streamed shard by shard."""
    from lodit.data.latent_cache import LatentCache

    cache = LatentCache(cache_dir)
    return latent_statistics((item.latents for item in cache.iter_items()), topk=topk)


def latent_stat_results(stats: dict[str, Any], *, model: str = "") -> list[MetricResult]:
    """The scalar statistics as :class:`MetricResult` rows for ``metrics.json`` (``n`` = frames);
    the per-channel mean/std summaries go in the effective-rank row's details."""
    n, dim = int(stats["n_frames"]), int(stats["dim"])
    std = stats["std"]
    rows = [
        MetricResult(
            "effective_rank", float(stats["effective_rank"]), n, model,
            {"dim": dim, "relative": float(stats["effective_rank"]) / dim,
             "channel_std_min": float(std.min()), "channel_std_max": float(std.max()),
             "channel_std_mean": float(std.mean()), "channel_mean_abs_max": float(stats["mean"].abs().max())},
        )
    ]
    for k, fraction in stats["topk_variance_fraction"].items():
        rows.append(MetricResult(f"top{k}_variance_fraction", fraction, n, model, {"k": k, "dim": dim}))
    return rows
