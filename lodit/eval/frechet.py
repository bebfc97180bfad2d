"""Fréchet distances between Gaussian fits of embedding sets: FAD, its bootstrap CI, and FAD∞.

For two Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` the Fréchet (2-Wasserstein) distance squared is

    ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Computation is in float64, through symmetric eigendecompositions only. With ``R = S1^{1/2}``
(from ``eigh(S1)``), ``S1 S2 = R (R S2)`` and ``M = (R S2) R = R S2 R`` have the same eigenvalues
(``AB`` and ``BA`` share their characteristic polynomial, singular or not), and ``M`` is
symmetric PSD, so its eigenvalues are real and non-negative: ``tr((S1 S2)^{1/2})`` is exactly the
sum of their square roots. This is the closed form of the Gaussian 2-Wasserstein distance itself
(``tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``), valid for every pair of PSD covariances.
Singular covariances — the norm when there are fewer clips than dimensions — need no special
case: there ``S1 S2`` may have no well-conditioned square root (a general ``sqrtm`` fails or
loses accuracy, and an ``eps·I`` offset would move the result by ``O(D·sqrt(eps))``), but the
eigenvalues of ``M`` stay well defined and are computed accurately. Round-off (which ``eigh`` keeps
to about ``eps·||M||`` per eigenvalue) can leave true zeros slightly negative or slightly
positive, and a square root turns ``1e-14`` into ``1e-7``; so eigenvalues below the usual
numerical-rank tolerance ``D·eps·max(eig)`` count as exact zeros.

FAD uses one embedding per clip (see :mod:`lodit.eval.embedders`); covariances are unbiased
(``ddof=1``). FAD is biased upwards at small N; :func:`fad_infinity` removes the bias by fitting
FAD against ``1/N`` over subset sizes and reading the line at ``1/N = 0`` (Chong & Forsyth,
"Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lodit.errors import LoditError
from lodit.eval.results import MetricResult


def as_matrix(emb: torch.Tensor | np.ndarray | Sequence, what: str = "embeddings") -> np.ndarray:
    """Embeddings as a float64 ``(N, D)`` array."""
    if isinstance(emb, torch.Tensor):
        emb = emb.detach().cpu().double().numpy()
    array = np.asarray(emb, dtype=np.float64)
    if array.ndim != 2:
        raise LoditError(f"{what} must be shaped (N, D), got {array.shape}")
    if not np.isfinite(array).all():
        raise LoditError(f"{what} contain NaN or inf values; check the audio and the embedder")
    return array


def gaussian_stats(emb: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` embeddings, float64."""
    array = as_matrix(emb)
    if array.shape[0] < 2:
        raise LoditError(f"a Gaussian fit needs at least 2 embeddings, got {array.shape[0]}")
    return array.mean(axis=0), np.cov(array, rowvar=False, ddof=1).reshape(array.shape[1], array.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise LoditError(
            f"Fréchet distance needs matching statistics, got means {mu1.shape} / {mu2.shape} and "
            f"covariances {sigma1.shape} / {sigma2.shape}; were both sets embedded by the same embedder?"
        )
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise LoditError("Fréchet distance: the means or covariances contain NaN or inf; check the embeddings")
    diff = mu1 - mu2
    trace_sqrt = trace_sqrt_product(sigma1, sigma2)
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    # The exact value is >= 0; a tiny negative one is round-off of equal distributions.
    return max(distance, 0.0)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((sigma1 sigma2)^{1/2})`` of two PSD ``(D, D)`` matrices, as the sum of the square roots
    of the eigenvalues of ``sigma1^{1/2} sigma2 sigma1^{1/2}`` (see the module docstring)."""
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ _symmetric(sigma2) @ root1  # (D, D), symmetric PSD up to round-off
    eigenvalues = np.linalg.eigvalsh(_symmetric(inner))
    # Below the numerical-rank tolerance an eigenvalue is round-off of an exact zero.
    tolerance = eigenvalues.size * np.finfo(np.float64).eps * max(float(eigenvalues.max()), 0.0)
    return float(np.sqrt(eigenvalues[eigenvalues > tolerance]).sum())


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a covariance; round-off negative eigenvalues become 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(_symmetric(sigma))
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T  # V diag(sqrt w) V^T


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    # eigh reads one triangle only; averaging with the transpose makes it see the whole matrix.
    return (matrix + matrix.T) / 2.0


def fad(
    ref_emb: torch.Tensor | np.ndarray,
    gen_emb: torch.Tensor | np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    ci: float = 0.95,
    embedder: str = "",
    reference: str = "",
    extra: Mapping[str, Any] | None = None,
) -> MetricResult:
    """Fréchet audio distance between a reference and a generated embedding set.

    ``bootstrap > 0`` resamples both sets with replacement that many times and reports the
    percentile confidence interval ``ci`` (``details["ci_low"]``, ``details["ci_high"]``).
    ``embedder`` (the embedding model's description) and ``reference`` (the reference set's name)
    are recorded with the number, as are any ``extra`` details (e.g. clip durations).
    """
    ref, gen = as_matrix(ref_emb, "reference embeddings"), as_matrix(gen_emb, "generated embeddings")
    _check_pair(ref, gen)
    if not 0.0 < ci < 1.0:
        raise LoditError(f"the confidence level must be between 0 and 1, got {ci}")
    value = frechet_distance(*gaussian_stats(ref), *gaussian_stats(gen))
    details: dict[str, Any] = {
        "n_ref": ref.shape[0],
        "n_gen": gen.shape[0],
        "dim": ref.shape[1],
        "reference": reference,
        **(dict(extra) if extra else {}),
    }
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty(bootstrap)
        for b in range(bootstrap):
            ref_b = ref[rng.integers(0, ref.shape[0], ref.shape[0])]
            gen_b = gen[rng.integers(0, gen.shape[0], gen.shape[0])]
            samples[b] = frechet_distance(*gaussian_stats(ref_b), *gaussian_stats(gen_b))
        low, high = np.quantile(samples, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
        details.update(ci=ci, ci_low=float(low), ci_high=float(high), bootstrap=bootstrap,
                       bootstrap_std=float(samples.std(ddof=1)) if bootstrap > 1 else 0.0, seed=seed)
    return MetricResult("fad", value, gen.shape[0], embedder, details)


def fad_infinity(
    ref_emb: torch.Tensor | np.ndarray,
    gen_emb: torch.Tensor | np.ndarray,
    *,
    ns: Sequence[int] | None = None,
    repeats: int = 1,
    seed: int = 0,
    embedder: str = "",
    reference: str = "",
) -> MetricResult:
    """FAD∞: the FAD an infinitely large generated set would get.

    For each subset size ``N`` in ``ns`` (default: 10 sizes evenly spaced from ``n_gen // 5`` to
    ``n_gen``), FAD is computed on ``repeats`` random subsets of the generated set (without
    replacement; the reference statistics always use the whole reference set) and averaged. FAD
    at size N is, to first order, ``FAD∞ + k / N``; a least-squares line of FAD against ``1 / N``
    gives FAD∞ as its intercept. ``details`` holds the sizes, the FAD at each, the slope and
    the fit's R².
    """
    ref, gen = as_matrix(ref_emb, "reference embeddings"), as_matrix(gen_emb, "generated embeddings")
    _check_pair(ref, gen)
    n_gen = gen.shape[0]
    if ns is None:
        ns = np.linspace(max(2, n_gen // 5), n_gen, 10)
    sizes = sorted({round(float(n)) for n in ns})
    if any(n < 2 or n > n_gen for n in sizes):
        raise LoditError(f"FAD∞ subset sizes must lie in 2..{n_gen} (the generated set's size), got {sizes}")
    if len(sizes) < 2:
        raise LoditError(f"FAD∞ needs at least 2 distinct subset sizes, got {sizes}; use a larger generated set")
    if repeats < 1:
        raise LoditError(f"FAD∞ repeats must be at least 1, got {repeats}")

    ref_stats = gaussian_stats(ref)
    rng = np.random.default_rng(seed)
    values = []
    for n in sizes:
        subset_values = [
            frechet_distance(*ref_stats, *gaussian_stats(gen[rng.choice(n_gen, n, replace=False)]))
            for _ in range(repeats)
        ]
        values.append(float(np.mean(subset_values)))
    inverse = 1.0 / np.asarray(sizes, dtype=np.float64)
    slope, intercept = np.polyfit(inverse, np.asarray(values), 1)
    fitted = intercept + slope * inverse
    spread = float(np.sum((np.asarray(values) - np.mean(values)) ** 2))
    r2 = 1.0 - float(np.sum((np.asarray(values) - fitted) ** 2)) / spread if spread > 0 else 1.0
    details = {
        "n_ref": ref.shape[0],
        "n_gen": n_gen,
        "dim": ref.shape[1],
        "reference": reference,
        "ns": sizes,
        "fad_at_n": values,
        "slope": float(slope),
        "r2": r2,
        "repeats": repeats,
        "seed": seed,
    }
    return MetricResult("fad_inf", float(intercept), n_gen, embedder, details)


def _check_pair(ref: np.ndarray, gen: np.ndarray) -> None:
    if ref.shape[1] != gen.shape[1]:
        raise LoditError(
            f"reference embeddings are {ref.shape[1]}-dim but generated ones are {gen.shape[1]}-dim; "
            "embed both sets with the same embedder"
        )
    for what, array in (("reference", ref), ("generated", gen)):
        if array.shape[0] < 2:
            raise LoditError(f"FAD needs at least 2 {what} clips, got {array.shape[0]}")
