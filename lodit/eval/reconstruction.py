"""Reconstruction metrics between reference audio and a tokenizer's reconstruction of it.

- :func:`multiscale_mel_distance`: mean over resolutions of L1 between log-mel spectrograms
  (natural log, floor 1e-5), at the tokenizer loss's default mel resolutions — the same quantity
  tokenizer training minimises (:class:`~lodit.latent_tokenizer.losses.MultiResolutionMelLoss`),
  so training curves and evaluation numbers are comparable.
- :func:`level_ratio`: median RMS ratio reconstruction / reference in dB (is it as loud?).
- :func:`stft_distance`: multi-resolution spectral convergence + log-magnitude L1
  (:class:`~lodit.latent_tokenizer.losses.MultiResolutionSTFTLoss`, default resolutions).
- :func:`si_sdr`: scale-invariant signal-to-distortion ratio in dB (Le Roux et al., "SDR –
  half-baked or well done?", 2019): both signals made zero-mean, the reference scaled by
  ``α = <est, ref> / ||ref||²``, ``10 log10(||α ref||² / ||est - α ref||²)``.
- :func:`pesq_score` (wide-band, 16 kHz) and :func:`stoi_score` through the optional ``pesq`` and
  ``pystoi`` packages (``pip install 'lodit[quality]'``); without them the result is NaN with the
  reason in ``details["unavailable"]``.

Every function takes lists of mono clips (``(S,)`` or ``(1, S)``) or a ``(B, 1, S)`` / ``(B, S)``
batch, pairs them in order, compares each pair over its common length (a decoder may return a
few extra samples) and reports the mean over pairs with the per-clip values in ``details``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from lodit.data.audio import mono_clip, resample
from lodit.errors import LoditError
from lodit.eval.results import MetricResult
from lodit.latent_tokenizer.losses import MultiResolutionMelLoss, MultiResolutionSTFTLoss, TokenizerLossConfig
from lodit.latent_tokenizer.reconstruct import level_db, si_sdr_db  # the same SI-SDR and level as the CLI round trip

Clips = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]

PESQ_RATE = 16000  # wide-band PESQ is defined at 16 kHz (8 kHz is narrow-band only)
FLOOR_ROBUST_RANGE_DB = 80.0  # the floor-robust mel distance ignores what lies 80 dB below a clip's peak


def _clip_list(wavs: Clips, what: str) -> list[torch.Tensor]:
    """Mono float32 ``(S,)`` clips from a batch or a list."""
    if isinstance(wavs, (torch.Tensor, np.ndarray)):
        batch = torch.as_tensor(wavs)
        if batch.dim() == 3:
            if batch.shape[1] != 1:
                raise LoditError(f"{what}: expected mono audio (B, 1, S), got {tuple(batch.shape)}")
            batch = batch[:, 0]
        if batch.dim() == 1:
            batch = batch[None]
        clips = list(batch)
    else:
        clips = [torch.as_tensor(w) for w in wavs]
    return [mono_clip(clip, what=f"{what}[{i}]") for i, clip in enumerate(clips)]


def _pairs(ref_wavs: Clips, rec_wavs: Clips) -> list[tuple[torch.Tensor, torch.Tensor]]:
    refs, recs = _clip_list(ref_wavs, "reference audio"), _clip_list(rec_wavs, "reconstructed audio")
    if len(refs) != len(recs):
        raise LoditError(f"{len(refs)} reference clips but {len(recs)} reconstructions; pair them one to one")
    if not refs:
        raise LoditError("reconstruction metrics need at least one clip pair")
    pairs = []
    for ref, rec in zip(refs, recs):
        length = min(ref.numel(), rec.numel())
        pairs.append((ref[:length], rec[:length]))
    return pairs


def _per_clip(
    name: str, pairs: list[tuple[torch.Tensor, torch.Tensor]], score: Callable[[torch.Tensor, torch.Tensor], float],
    **details,
) -> MetricResult:
    values = [score(ref, rec) for ref, rec in pairs]
    return MetricResult(name, float(np.mean(values)), len(values), "", {"per_clip": values, **details})


def multiscale_mel_distance(
    ref_wavs: Clips, rec_wavs: Clips, sample_rate: int, *, dynamic_range_db: float | None = None
) -> MetricResult:
    """Mean multi-resolution log-mel L1 between each reference and its reconstruction.

    With ``dynamic_range_db`` the log floor is each reference's peak minus that many dB
    (``mel_distance_<N>db``): differences in bins far below the peak, e.g. faint noise over digital
    silence, no longer dominate, so the number follows what a listener hears."""
    resolutions = TokenizerLossConfig().mel_resolutions
    loss = MultiResolutionMelLoss(sample_rate, resolutions, dynamic_range_db)
    name = "mel_distance" if dynamic_range_db is None else f"mel_distance_{dynamic_range_db:g}db"
    with torch.no_grad():
        return _per_clip(
            name, _pairs(ref_wavs, rec_wavs), lambda ref, rec: float(loss(rec[None, None], ref[None, None])),
            resolutions=[list(r) for r in resolutions], sample_rate=sample_rate, dynamic_range_db=dynamic_range_db,
        )


def level_ratio(ref_wavs: Clips, rec_wavs: Clips) -> MetricResult:
    """Median over clip pairs of ``20 log10(RMS(reconstruction) / RMS(reference))`` in dB.

    0 dB is the same level, -6 dB half the amplitude. The median, because one near-silent
    reference would dominate a mean of ratios."""
    result = _per_clip("level_ratio", _pairs(ref_wavs, rec_wavs), level_db, statistic="median")
    result.value = float(np.median(result.details["per_clip"]))
    result.details["unit"] = "dB"
    return result


def stft_distance(ref_wavs: Clips, rec_wavs: Clips) -> MetricResult:
    """Mean multi-resolution STFT distance (spectral convergence + log-magnitude L1)."""
    resolutions = TokenizerLossConfig().stft_resolutions
    loss = MultiResolutionSTFTLoss(resolutions)
    with torch.no_grad():
        return _per_clip(
            "stft_distance", _pairs(ref_wavs, rec_wavs), lambda ref, rec: float(loss(rec[None, None], ref[None, None])),
            resolutions=[list(r) for r in resolutions],
        )


def si_sdr(ref_wavs: Clips, rec_wavs: Clips) -> MetricResult:
    """Mean SI-SDR in dB over clip pairs (higher is better)."""
    return _per_clip("si_sdr", _pairs(ref_wavs, rec_wavs), si_sdr_db, unit="dB")


def pesq_score(ref_wavs: Clips, rec_wavs: Clips, sample_rate: int) -> MetricResult:
    """Wide-band PESQ (MOS-LQO, about 1-4.6) at 16 kHz; audio at other rates is resampled first."""
    try:
        from pesq import PesqError, pesq
    except ImportError:
        return MetricResult.unavailable(
            "pesq", "the pesq package is not installed (pip install pesq, or 'lodit[quality]')"
        )

    def score(ref: torch.Tensor, rec: torch.Tensor) -> float:
        ref16, rec16 = resample(ref, sample_rate, PESQ_RATE), resample(rec, sample_rate, PESQ_RATE)
        try:
            return float(pesq(PESQ_RATE, ref16.numpy().astype(np.float64), rec16.numpy().astype(np.float64), "wb"))
        except PesqError as exc:  # silent or too-short clips
            raise LoditError(
                f"PESQ failed on a clip ({type(exc).__name__}: {exc}); PESQ needs speech of at least ~0.25 s"
            ) from None

    return _per_clip("pesq", _pairs(ref_wavs, rec_wavs), score, mode="wb", rate=PESQ_RATE)


def stoi_score(ref_wavs: Clips, rec_wavs: Clips, sample_rate: int, *, extended: bool = False) -> MetricResult:
    """Short-time objective intelligibility (0-1; ``extended`` for ESTOI)."""
    try:
        from pystoi import stoi
    except ImportError:
        return MetricResult.unavailable(
            "stoi", "the pystoi package is not installed (pip install pystoi, or 'lodit[quality]')"
        )

    def score(ref: torch.Tensor, rec: torch.Tensor) -> float:
        return float(
            stoi(ref.numpy().astype(np.float64), rec.numpy().astype(np.float64), sample_rate, extended=extended)
        )

    return _per_clip("estoi" if extended else "stoi", _pairs(ref_wavs, rec_wavs), score)


def reconstruction_metrics(
    ref_wavs: Clips, rec_wavs: Clips, sample_rate: int, *, speech: Sequence[bool] | None = None
) -> list[MetricResult]:
    """Mel distance (absolute and floor-robust), level ratio, STFT distance and SI-SDR of every pair,
    and PESQ and STOI of the speech pairs (``speech`` flags them; every pair when None; with flags
    also ``level_ratio_speech``, the level ratio of the speech pairs alone). PESQ and STOI
    model speech perception: on beeps or music they measure nothing a listener would agree with.
    They are NaN with a reason when their packages are missing or no pair is speech."""
    refs, recs = _clip_list(ref_wavs, "reference audio"), _clip_list(rec_wavs, "reconstructed audio")
    if speech is not None and len(speech) != len(refs):
        raise LoditError(f"{len(refs)} clips but {len(speech)} speech flags; flag every clip")
    chosen = [i for i in range(len(refs)) if speech is None or speech[i]]
    speech_refs, speech_recs = [refs[i] for i in chosen], [recs[i] for i in chosen]
    speech_metrics = (
        [pesq_score(speech_refs, speech_recs, sample_rate), stoi_score(speech_refs, speech_recs, sample_rate)]
        if chosen else [MetricResult.unavailable(name, "no speech clips among the evaluated clips")
                        for name in ("pesq", "stoi")]
    )
    if speech is not None:
        # The level over every clip is a median that the generated sounds can dominate; speech
        # has its own, as PESQ and STOI do.
        speech_level = (level_ratio(speech_refs, speech_recs) if chosen
                        else MetricResult.unavailable("level_ratio", "no speech clips among the evaluated clips"))
        speech_level.name = "level_ratio_speech"
        speech_metrics.append(speech_level)
    for metric in speech_metrics:
        metric.details["clips"] = "speech" if speech is not None else "all"
    return [
        multiscale_mel_distance(refs, recs, sample_rate),
        multiscale_mel_distance(refs, recs, sample_rate, dynamic_range_db=FLOOR_ROBUST_RANGE_DB),
        level_ratio(refs, recs),
        stft_distance(refs, recs),
        si_sdr(refs, recs),
        *speech_metrics,
    ]
