"""Tests for lodit.eval's model-free metrics: Fréchet distance / FAD / FAD∞, linear probes and
clustering, latent statistics, reconstruction distances, WER normalisation and counting, the
result record and the embedding cache (with a small deterministic embedder)."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

import lodit.eval.reconstruction as reconstruction_module
from lodit.data.audio import save_audio
from lodit.errors import LoditError
from lodit.eval.asr import normalize_text, word_error_rate
from lodit.eval.embedders import Embedder
from lodit.eval.embedding_cache import EmbeddingCache
from lodit.eval.frechet import fad, fad_infinity, frechet_distance, gaussian_stats, trace_sqrt_product
from lodit.eval.latent_stats import latent_cache_statistics, latent_stat_results, latent_statistics
from lodit.eval.probes import (
    clustering_scores,
    linear_probe,
    linear_probe_kfold,
    purity,
    quantize_latents,
    silhouette_score,
    token_histograms,
)
from lodit.eval.reconstruction import (
    level_ratio,
    multiscale_mel_distance,
    pesq_score,
    reconstruction_metrics,
    si_sdr,
    stft_distance,
    stoi_score,
)
from lodit.eval.results import MetricResult


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # shared eigenbasis -> the covariances commute
    a, b = rng.uniform(0.2, 3.0, 6), rng.uniform(0.2, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # Diagonal covariances: sum of (sqrt(a) - sqrt(b))^2.
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(b)) == pytest.approx(
        np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9
    )


def test_frechet_distance_matches_eigendecomposition_for_full_covariances():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1  # symmetric PSD with the eigenvalues of s1 s2
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # Symmetric in its two arguments.
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_singular_covariances_and_mismatch():
    # Zero-variance channels make the product singular; the value stays exact.
    value = frechet_distance(np.zeros(3), np.diag([1.0, 1.0, 0.0]), np.zeros(3), np.diag([1.0, 0.0, 0.0]))
    assert value == pytest.approx(1.0, rel=1e-12)
    # Fewer samples than dimensions: finite, non-negative.
    rng = np.random.default_rng(2)
    small = fad(rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 1.0)
    assert math.isfinite(small.value) and small.value > 0
    with pytest.raises(LoditError, match="same embedder"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(LoditError, match="3-dim but generated ones are 4-dim"):
        fad(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(LoditError, match="at least 2"):
        fad(rng.normal(size=(5, 3)), rng.normal(size=(1, 3)))


@pytest.mark.parametrize(
    ("dim", "n1", "n2"),
    [(24, 200, 300), (48, 12, 20), (64, 30, 30)],
    ids=["full-rank", "rank-deficient", "rank-deficient-equal-n"],
)
def test_trace_sqrt_product_matches_sqrtm(dim, n1, n2):
    import warnings

    import scipy.linalg

    rng = np.random.default_rng(dim)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x1 = rng.normal(size=(n1, dim)) @ mixing  # correlated channels
    x2 = rng.normal(size=(n2, dim)) * np.linspace(0.5, 2.0, dim) + 0.3
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)  # rank min(n - 1, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns about the singular products
        by_sqrtm = float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    value = trace_sqrt_product(s1, s2)
    assert value == pytest.approx(by_sqrtm, rel=1e-6)
    assert trace_sqrt_product(s2, s1) == pytest.approx(value, rel=1e-9)
    if n1 <= dim:
        # Exact low-rank reference: s1 = A A^T, so s1 s2 shares its nonzero eigenvalues with the
        # small (n1, n1) matrix A^T s2 A — no zero eigenvalues for round-off to inflate.
        a = (x1 - x1.mean(0)).T / np.sqrt(n1 - 1)  # (dim, n1)
        small = np.linalg.eigvalsh(a.T @ s2 @ a)
        exact = float(np.sqrt(small[small > n1 * np.finfo(float).eps * small.max()]).sum())
        assert value == pytest.approx(exact, rel=1e-8)


def test_fad_self_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(400, 16))
    noise = rng.normal(size=(400, 16))
    assert fad(ref, ref).value == pytest.approx(0.0, abs=1e-8)
    values = [fad(ref, ref + sigma * noise).value for sigma in (0.0, 0.1, 0.3, 1.0, 2.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-8)
    assert all(later > earlier for earlier, later in zip(values, values[1:]))


def test_fad_from_gaussian_samples_records_details_and_bootstrap_ci():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(300, 8))
    gen = rng.normal(size=(200, 8)) * 1.5 + 0.5
    mu_r, s_r = gaussian_stats(ref)
    assert s_r.shape == (8, 8) and np.allclose(s_r, np.cov(ref, rowvar=False))
    result = fad(ref, gen, bootstrap=20, seed=0, embedder="toy", reference="ref-set",
                 extra={"durations": {"mean": 2.0}})
    assert result.name == "fad" and result.model == "toy" and result.n == 200
    d = result.details
    assert (d["n_ref"], d["n_gen"], d["dim"], d["reference"], d["durations"]) == (300, 200, 8, "ref-set", {"mean": 2.0})
    assert d["ci_low"] < result.value < d["ci_high"] and d["bootstrap"] == 20
    # Same seed, same interval.
    again = fad(ref, gen, bootstrap=20, seed=0)
    assert (again.details["ci_low"], again.details["ci_high"]) == (d["ci_low"], d["ci_high"])


def test_fad_infinity_removes_the_small_n_bias():
    rng = np.random.default_rng(5)
    dim = 16
    scales = np.linspace(0.5, 2.0, dim)
    mu_gen = np.full(dim, 0.3)
    true_value = frechet_distance(np.zeros(dim), np.eye(dim), mu_gen, np.diag(scales**2))
    ref = rng.normal(size=(20000, dim))
    # Averaged over independent generated sets, so the comparison is about bias, not one draw's luck.
    small_n, extrapolated = [], []
    for trial in range(8):
        gen = rng.normal(size=(150, dim)) * scales + mu_gen
        small_n.append(fad(ref, gen).value)
        extrapolated.append(fad_infinity(ref, gen, ns=range(40, 151, 10), repeats=4, seed=trial))
    bias_small = np.mean(small_n) - true_value
    bias_inf = np.mean([r.value for r in extrapolated]) - true_value
    assert bias_small > 0.4  # FAD is biased upwards at small N
    assert abs(bias_inf) < 0.3 * bias_small
    result = extrapolated[0]
    assert result.name == "fad_inf" and result.n == 150 and result.details["ns"][0] == 40
    assert result.details["slope"] > 0 and len(result.details["fad_at_n"]) == 12
    with pytest.raises(LoditError, match="subset sizes"):
        fad_infinity(ref, gen, ns=[10, 1000])


# ----------------------------------------------------------------------------- probes


def _blobs(seed: int, per_class: int, dim: int = 16, classes=("dog", "rain", "piano"), spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(size=(len(classes), dim)) * 4.0
    X = np.concatenate([centres[i] + spread * rng.normal(size=(per_class, dim)) for i in range(len(classes))])
    y = [label for label in classes for _ in range(per_class)]
    return X, y


def test_linear_probe_on_separable_features_is_nearly_perfect():
    train_X, train_y = _blobs(0, 40)
    test_X, test_y = _blobs(1, 20)
    result = linear_probe(train_X, train_y, test_X, test_y, model="toy features")
    assert result.value >= 0.98 and result.n == 60 and result.model == "toy features"
    assert result.details["n_classes"] == 3 and result.details["train_accuracy"] == 1.0
    folds = linear_probe_kfold(*_blobs(2, 30), folds=5, seed=0)
    assert folds.value >= 0.98 and len(folds.details["fold_accuracies"]) == 5
    # Features without class information stay near chance.
    rng = np.random.default_rng(3)
    chance = linear_probe(rng.normal(size=(90, 8)), train_y[::1][:90], rng.normal(size=(60, 8)), test_y)
    assert chance.value < 0.6
    # A test label never seen in training counts as wrong.
    unseen = linear_probe(train_X, train_y, test_X[:2], ["dog", "cat"])
    assert unseen.value <= 0.5


def test_linear_probe_errors():
    X, y = _blobs(0, 5)
    with pytest.raises(LoditError, match="one label per clip"):
        linear_probe(X, y[:-1], X, y)
    with pytest.raises(LoditError, match="at least 2 classes"):
        linear_probe(X, ["a"] * len(y), X, y)


def test_silhouette_hand_example_and_singletons():
    points = np.array([[0.0], [1.0], [4.0], [5.0]])
    expected = np.mean([3.5 / 4.5, 2.5 / 3.5, 2.5 / 3.5, 3.5 / 4.5])
    assert silhouette_score(points, [0, 0, 1, 1]) == pytest.approx(expected, rel=1e-12)
    # A one-member cluster scores 0: points 0 and 1 as above (b = mean distance to {4} = 4, 3).
    assert silhouette_score(np.array([[0.0], [1.0], [4.0]]), ["a", "a", "b"]) == pytest.approx(
        np.mean([(4 - 1) / 4, (3 - 1) / 3, 0.0]), rel=1e-12
    )
    with pytest.raises(LoditError, match="at least 2 clusters"):
        silhouette_score(points, [0, 0, 0, 0])


def test_silhouette_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is an optional cross-check")
    rng = np.random.default_rng(6)
    X = rng.normal(size=(120, 5))
    labels = rng.integers(0, 4, 120)
    assert silhouette_score(X, labels.tolist(), chunk=17) == pytest.approx(
        metrics.silhouette_score(X, labels), rel=1e-9
    )


def test_purity_and_clustering_scores():
    assert purity([0, 0, 1, 1, 1], ["a", "a", "a", "b", "b"]) == pytest.approx(0.8)
    X, y = _blobs(7, 25, spread=0.3)
    scores = clustering_scores(X, y, seed=0, model="toy")
    assert set(scores) == {"silhouette", "purity"}
    assert scores["purity"].value == 1.0 and scores["purity"].n == 75
    assert 0.7 < scores["silhouette"].value <= 1.0
    assert scores["silhouette"].details["label_silhouette"] == pytest.approx(scores["silhouette"].value)
    noise = clustering_scores(np.random.default_rng(8).normal(size=(75, 16)), y, seed=0)
    assert noise["purity"].value < 0.7 and noise["silhouette"].value < 0.3


def test_token_histograms_and_latent_quantisation():
    hist = token_histograms(torch.tensor([[0, 1, 1, 3], [2, 2, 2, 2]]), vocab=4)
    assert torch.allclose(hist, torch.tensor([[0.25, 0.5, 0.0, 0.25], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    ragged = token_histograms([[1], [0, 0, 1]], vocab=2)
    assert torch.allclose(ragged.sum(1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(LoditError, match="outside 0..3"):
        token_histograms([[4]], vocab=4)
    rng = np.random.default_rng(9)
    # Two kinds of clips whose frames sit near different centres: their code histograms differ.
    clips = [torch.tensor(rng.normal(size=(20, 4)) * 0.1 + (3.0 if i % 2 else -3.0)) for i in range(6)]
    tokens, codebook = quantize_latents(clips, codebook_size=4, seed=0)
    assert codebook.shape == (4, 4) and [t.shape for t in tokens] == [(20,)] * 6
    hist = token_histograms(tokens, vocab=4)
    scores = clustering_scores(hist, ["low", "high"] * 3, seed=0)
    assert scores["purity"].value == 1.0


# ----------------------------------------------------------------------------- latent statistics


def test_effective_rank_of_isotropic_and_low_rank_data():
    rng = np.random.default_rng(10)
    iso = latent_statistics(torch.from_numpy(rng.normal(size=(20000, 16))))
    assert 15.5 < iso["effective_rank"] <= 16.0
    assert torch.allclose(iso["std"], torch.ones(16), atol=0.03) and iso["mean"].abs().max() < 0.03
    low = rng.normal(size=(5000, 3)) @ rng.normal(size=(3, 16)) + 7.0  # rank 3 after centring
    stats = latent_statistics(low)
    assert stats["effective_rank"] <= 3.0 + 1e-6 and stats["effective_rank"] > 2.0
    assert stats["topk_variance_fraction"][8] == pytest.approx(1.0, abs=1e-9)


def test_topk_variance_fraction_and_effective_rank_exact_on_constructed_spectrum():
    rng = np.random.default_rng(11)
    n, dim = 400, 12
    singular = np.linspace(6.0, 0.5, dim)
    centred = rng.normal(size=(n, dim))
    centred -= centred.mean(0)
    u, _ = np.linalg.qr(centred)  # orthonormal columns, each zero-mean
    v, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    X = (u * singular) @ v.T + rng.normal(size=dim)  # covariance eigenvalues = singular^2 / n exactly
    stats = latent_statistics(X, topk=(1, 8, 32))
    eig = singular**2
    assert set(stats["topk_variance_fraction"]) == {1, 8, 12}  # k > D dropped, D itself always given
    assert stats["topk_variance_fraction"][1] == pytest.approx(eig[0] / eig.sum(), rel=1e-9)
    assert stats["topk_variance_fraction"][8] == pytest.approx(eig[:8].sum() / eig.sum(), rel=1e-9)
    p = singular / singular.sum()
    assert stats["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    # Streaming over clips gives the same statistics as one matrix.
    streamed = latent_statistics(torch.from_numpy(chunk) for chunk in np.array_split(X, 7))
    assert torch.allclose(streamed["eigenvalues"], stats["eigenvalues"], rtol=1e-9, atol=1e-12)
    assert torch.allclose(streamed["mean"], stats["mean"]) and torch.allclose(streamed["std"], stats["std"])
    rows = latent_stat_results(stats, model="tok")
    assert [r.name for r in rows] == ["effective_rank", "top1_variance_fraction", "top8_variance_fraction",
                                      "top12_variance_fraction"]
    assert rows[0].n == n and rows[0].model == "tok"


def test_latent_statistics_stream_a_latent_cache(tmp_path):
    from lodit.data.latent_cache import LatentCacheWriter

    rng = np.random.default_rng(12)
    clips = [torch.from_numpy(rng.normal(size=(t, 6)).astype(np.float32)) for t in (5, 9, 3, 11)]
    producer = {"name": "toy", "config_hash": "abc", "latent_dim": 6, "frame_rate": 25.0, "sample_rate": 16000}
    with LatentCacheWriter(tmp_path / "cache", producer=producer, shard_frames=10) as writer:
        for i, clip in enumerate(clips):
            writer.add(f"clip{i}", clip)
    from_cache = latent_cache_statistics(str(tmp_path / "cache"))
    direct = latent_statistics(torch.cat(clips))
    assert from_cache["n_frames"] == 28
    assert torch.allclose(from_cache["eigenvalues"], direct["eigenvalues"], rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- reconstruction


def _tone(seconds: float = 1.0, sr: int = 16000, freq: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t) * (1 + 0.3 * torch.sin(2 * math.pi * 3 * t))


def test_si_sdr_identical_scaled_and_known_noise():
    ref = _tone()
    assert si_sdr([ref], [ref]).value > 80.0
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    r = ref.double() - ref.double().mean()
    noise = noise - noise.mean()
    noise = noise - (noise @ r) / (r @ r) * r  # orthogonal to the reference and zero-mean
    noise = 0.1 * noise / noise.norm() * r.norm()  # -20 dB relative to the reference
    estimate = 2.0 * r + noise
    expected = 10 * math.log10((2.0 * r).pow(2).sum() / noise.pow(2).sum())
    result = si_sdr([r.float()], [estimate.float()])
    assert result.value == pytest.approx(expected, abs=1e-3) and expected == pytest.approx(26.02, abs=0.01)
    # Scale invariance; per-clip values and the mean over clips.
    both = si_sdr(torch.stack([r, r]).float()[:, None], torch.stack([estimate, 0.3 * estimate]).float()[:, None])
    assert both.n == 2 and both.details["per_clip"] == pytest.approx([expected, expected], abs=1e-3)


def test_spectral_distances_zero_for_identical_and_growing_with_noise():
    ref = _tone()
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    assert multiscale_mel_distance([ref], [ref], 16000).value == pytest.approx(0.0, abs=1e-7)
    assert stft_distance([ref], [ref]).value == pytest.approx(0.0, abs=1e-7)
    mels = [multiscale_mel_distance([ref], [ref + s * noise], 16000).value for s in (0.001, 0.01, 0.1)]
    stfts = [stft_distance([ref], [ref + s * noise]).value for s in (0.001, 0.01, 0.1)]
    assert mels[0] < mels[1] < mels[2] and stfts[0] < stfts[1] < stfts[2]
    # A reconstruction a few samples longer is compared over the common length.
    longer = torch.cat([ref, torch.zeros(37)])
    assert multiscale_mel_distance([ref], [longer], 16000).value == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(LoditError, match="pair them one to one"):
        si_sdr([ref, ref], [ref])


def test_reconstruction_metrics_and_optional_quality_packages(monkeypatch):
    ref = _tone(1.0)
    rec = ref + 0.01 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    monkeypatch.setitem(sys.modules, "pesq", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pystoi", None)
    results = reconstruction_metrics([ref], [rec], 16000)
    names = ["mel_distance", "mel_distance_80db", "level_ratio", "stft_distance", "si_sdr", "pesq", "stoi"]
    assert [r.name for r in results] == names
    assert all(r.available and math.isfinite(r.value) for r in results[:5])
    assert math.isnan(results[5].value) and "pip install pesq" in results[5].details["unavailable"]
    assert math.isnan(results[6].value) and "pip install pystoi" in results[6].details["unavailable"]


def test_pesq_and_stoi_score_only_the_speech_clips(monkeypatch):
    ref = _tone(1.0)
    rec = ref + 0.01 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    seen = []

    def fake_stoi(refs, recs, rate, **kwargs):
        seen.append(len(refs))
        return MetricResult("stoi", 0.5, len(refs), "")

    monkeypatch.setattr(reconstruction_module, "stoi_score", fake_stoi)
    results = {r.name: r for r in reconstruction_metrics([ref, ref, ref], [rec, rec, rec], 16000,
                                                         speech=[True, False, True])}
    assert seen == [2] and results["stoi"].details["clips"] == "speech"
    quiet = [rec, 0.5 * rec, rec]  # the non-speech clip comes back 6 dB quiet: the speech level is unchanged
    levels = {r.name: r for r in reconstruction_metrics([ref, ref, ref], quiet, 16000, speech=[True, False, True])}
    assert levels["level_ratio_speech"].n == 2
    assert levels["level_ratio_speech"].value == pytest.approx(level_ratio([ref, ref], [rec, rec]).value)
    quiet_level = levels["level_ratio"].details["per_clip"][1]
    assert quiet_level == pytest.approx(levels["level_ratio_speech"].value - 6.02, abs=0.01)
    assert results["mel_distance"].n == 3  # the other metrics see every clip
    none = {r.name: r for r in reconstruction_metrics([ref], [rec], 16000, speech=[False])}
    assert math.isnan(none["pesq"].value) and "no speech clips" in none["pesq"].details["unavailable"]
    assert math.isnan(none["level_ratio_speech"].value)
    with pytest.raises(LoditError, match="speech flags"):
        reconstruction_metrics([ref], [rec], 16000, speech=[True, False])


def test_level_ratio_is_the_median_rms_ratio_in_db():
    ref = _tone(1.0)
    clips = [ref, ref, ref]
    recs = [0.5 * ref, ref, 0.01 * ref]  # -6.02, 0, -40 dB: the median ignores the one collapsed clip
    result = level_ratio(clips, recs)
    assert result.value == pytest.approx(-6.0206, abs=1e-3)
    assert result.details["per_clip"] == pytest.approx([-6.0206, 0.0, -40.0], abs=1e-3)


def test_floor_robust_mel_distance_ignores_faint_noise_in_silence():
    ref = torch.cat([_tone(0.5), torch.zeros(8000)])  # a tone, then digital silence
    faint = ref + 1e-5 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    plain = multiscale_mel_distance([ref], [faint], 16000).value
    robust = multiscale_mel_distance([ref], [faint], 16000, dynamic_range_db=80.0)
    assert robust.name == "mel_distance_80db"
    assert robust.value < 0.01 < plain


def test_pesq_and_stoi_when_installed():
    pytest.importorskip("pesq", reason="pesq is optional (lodit[quality])")
    pytest.importorskip("pystoi", reason="pystoi is optional (lodit[quality])")
    generator = torch.Generator().manual_seed(3)
    # Speech-like: noise bursts at a syllable rate, so PESQ's voice activity detection finds speech.
    envelope = (torch.sin(2 * math.pi * 4 * torch.arange(48000) / 16000) > 0).float()
    ref = 0.3 * torch.randn(48000, generator=generator) * envelope
    noisy = ref + 0.05 * torch.randn(48000, generator=generator)
    assert pesq_score([ref], [ref], 16000).value > 4.0
    assert pesq_score([ref], [noisy], 16000).value < pesq_score([ref], [ref], 16000).value
    assert stoi_score([ref], [ref], 16000).value == pytest.approx(1.0, abs=1e-3)
    assert stoi_score([ref], [noisy], 16000).value < 0.999


# ----------------------------------------------------------------------------- WER


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  The   QUICK brown\tfox. ", "the quick brown fox"),
        ("Don't stop — now", "dont stop now"),
        ("A well-known fact/idea", "a well known fact idea"),
        ("It costs $3.50, or 1,000 yen.", "it costs 3.50 or 1,000 yen"),  # numbers as written
        ("Twelve o'clock", "twelve oclock"),
        ("Café NAÏVE", "café naïve"),
        ("", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_word_error_rate_by_hand():
    refs = ["The cat sat on the mat.", "Hello world"]
    hyps = ["the cat sit on mat", "hello there, world!"]
    result = word_error_rate(refs, hyps, model="asr")
    # Utterance 1: sat->sit (S) and a missing "the" (D), 2 errors / 6 words; utterance 2: one insertion.
    assert result.value == pytest.approx(3 / 8) and result.n == 2 and result.model == "asr"
    d = result.details
    assert (d["substitutions"], d["deletions"], d["insertions"], d["ref_words"]) == (1, 1, 1, 8)
    assert [u["wer"] for u in d["per_utterance"]] == pytest.approx([2 / 6, 1 / 2])
    assert word_error_rate(["Yes!"], ["yes"]).value == 0.0
    # An empty reference contributes its transcript's words as insertions.
    assert word_error_rate(["one two", ""], ["one two", "extra"]).value == pytest.approx(0.5)
    with pytest.raises(LoditError, match="one transcript per reference"):
        word_error_rate(["a"], [])
    with pytest.raises(LoditError, match="empty after normalisation"):
        word_error_rate(["..."], ["a"])


# ----------------------------------------------------------------------------- results and cache


def test_metric_result_round_trips_through_strict_json():
    result = MetricResult("fad", 1.5, 10, "whisper base", {"ci_low": np.float64(1.0), "per": torch.tensor([1.0, 2.0]),
                                                          "nan": float("nan")})
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data == {"name": "fad", "value": 1.5, "n": 10, "model": "whisper base",
                    "details": {"ci_low": 1.0, "per": [1.0, 2.0], "nan": None}}
    missing = MetricResult.unavailable("clap_score", "no CLAP model given", n=3)
    assert not missing.available and math.isnan(missing.value)
    back = MetricResult.from_dict(json.loads(json.dumps(missing.to_dict(), allow_nan=False)))
    assert math.isnan(back.value) and back.details["unavailable"] == "no CLAP model given" and back.n == 3


class _CountingEmbedder(Embedder):
    """Frame features [mean, rms, peak] per 100 samples; counts how many clips it embedded."""

    name, description, sample_rate, dim = "counting", "counting embedder", 8000, 3

    def __init__(self):
        self.calls = 0

    def embed_frames(self, wav):
        self.calls += 1
        frames = self._mono(wav)[: (wav.numel() // 100) * 100].reshape(-1, 100)
        return torch.stack([frames.mean(1), frames.pow(2).mean(1).sqrt(), frames.abs().amax(1)], dim=1)

    def identity(self):
        return "counting|v1"


def test_embedding_cache_computes_only_misses(tmp_path):
    paths = []
    for i in range(3):
        paths.append(save_audio(tmp_path / f"clip{i}.wav", 0.1 * (i + 1) * _tone(0.5, 8000)[None], 8000))
    embedder = _CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "cache")
    first = embedder.embed_files(paths, cache)
    assert first.shape == (3, 3) and embedder.calls == 3
    uncached = embedder.embed_files(paths)
    assert torch.allclose(first, uncached) and embedder.calls == 6
    second = cache.embed_set(embedder, paths)
    assert torch.equal(first, second) and embedder.calls == 6 and cache.hits == 3
    # Rewriting one file (new size and mtime) re-embeds just that file.
    save_audio(paths[1], 0.9 * _tone(0.7, 8000)[None], 8000)
    os.utime(paths[1], ns=(1, 1))
    third = cache.embed_set(embedder, paths)
    assert embedder.calls == 7 and not torch.equal(third[1], first[1]) and torch.equal(third[0], first[0])
    assert (cache.root / os.listdir(cache.root)[0] / "identity.txt").read_text().strip() == "counting|v1"
    with pytest.raises(LoditError, match="not found"):
        cache.embed_set(embedder, [tmp_path / "missing.wav"])


def test_embedding_cache_keys_segments_separately(tmp_path):
    path = save_audio(tmp_path / "long.wav", torch.cat([0.1 * _tone(0.5, 8000), 0.8 * _tone(0.5, 8000)])[None], 8000)
    embedder = _CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "cache")
    halves = cache.embed_set(embedder, [path, path], segments=[(0.0, 0.5), (0.5, None)])
    assert embedder.calls == 2 and halves[1, 1] > 5 * halves[0, 1]  # the second half is louder
    whole = embedder.embed_files([path], cache)
    assert embedder.calls == 3 and torch.allclose(whole[0], halves.mean(0), atol=1e-5)
    uncached = embedder.embed_files([path, path], segments=[(0.0, 0.5), (0.5, None)])
    assert torch.allclose(uncached, halves)
    with pytest.raises(LoditError, match="one \\(offset, duration\\) per file"):
        embedder.embed_files([path], segments=[])


def test_probes_on_a_labelled_manifest_with_its_own_folds(tmp_path):
    from lodit.data.manifest import write_manifest
    from lodit.eval.probes import labelled_features

    rows = []
    for i in range(12):
        kind = ["quiet", "loud"][i % 2]
        wav = (0.05 if kind == "quiet" else 0.6) * _tone(0.4, 8000, freq=300 + 40 * i)
        save_audio(tmp_path / f"clip{i}.wav", wav[None], 8000)
        rows.append({"audio": f"clip{i}.wav", "domain": "audio", "labels": {"category": kind, "fold": i % 3}})
    write_manifest(tmp_path / "manifest.jsonl", rows)
    embedder = _CountingEmbedder()
    data = labelled_features(tmp_path / "manifest.jsonl", embedder, "category", fold_key="fold",
                             cache=EmbeddingCache(tmp_path / "cache"))
    assert data.features.shape == (12, 3) and data.labels[:2] == ["quiet", "loud"]
    assert data.fold_ids[:4] == [0, 1, 2, 0] and data.model == "counting embedder"
    result = linear_probe_kfold(data.features, data.labels, fold_ids=data.fold_ids, model=data.model)
    assert result.value == 1.0 and result.details["folds"] == 3 and result.details["split"] == "given fold ids"
    assert labelled_features(tmp_path / "manifest.jsonl", embedder, "domain").labels == ["audio"] * 12
    with pytest.raises(LoditError, match="line 1: the row has no 'speaker' label"):
        labelled_features(tmp_path / "manifest.jsonl", embedder, "speaker")
