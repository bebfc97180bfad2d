"""The Tokenizer tab: one recording through a tokenizer and back, with how close it came and what its latents look like.

:func:`round_trip_audio` reads the page's audio at the tokenizer's rate, encodes it (the
deterministic path, as ``lodit encode``), decodes it, and writes ``input.wav``, ``reconstruction.wav``
and their mel images on one colour scale (so a quieter reconstruction looks darker). It returns

- ``metrics``: the reconstruction metrics of the comparison report
  (:mod:`lodit.eval.reconstruction`): multi-resolution mel distance (absolute and floor-robust),
  the level ratio in dB (is the reconstruction as loud as the input?), STFT distance, SI-SDR, and
  PESQ / STOI where their packages are installed, otherwise the reason;
- ``latents``: the latent frames' shape and rate, their overall mean / std / range, the spread of
  the per-channel std, and the effective rank and top-k variance fractions of
  :func:`lodit.eval.latent_stats.latent_statistics` (over this clip's frames, so the rank is at
  most the number of frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lodit.app.media import AudioInput, mel_image, mel_limits, read_audio_input, write_wav
from lodit.errors import LoditError
from lodit.eval import reconstruction
from lodit.eval.latent_stats import latent_statistics

MAX_SECONDS = 120.0


@dataclass
class RoundTripOutput:
    input_wav: Path
    recon_wav: Path
    input_mel: Path
    recon_mel: Path
    sample_rate: int
    metrics: dict[str, Any]  # name -> value (None when unavailable) and "unavailable": {name: reason}
    latents: dict[str, Any]
    recon: torch.Tensor = field(repr=False, default=None)  # (1, S)


def round_trip_audio(tokenizer, audio: AudioInput, folder: str | Path) -> RoundTripOutput:
    """Encode and decode ``audio`` (a path or ``(rate, array)``) with ``tokenizer``; files into ``folder``."""
    folder = Path(folder)
    rate = int(tokenizer.sample_rate)
    wav = read_audio_input(audio, rate, what="input audio", max_seconds=MAX_SECONDS)  # (1, S)
    if float(wav.abs().max()) == 0.0:
        raise LoditError("the input is silent (all samples zero); give audio with some signal")
    device = next(tokenizer.parameters()).device
    with torch.no_grad():
        latents = tokenizer.encode(wav.to(device)).float()  # (1, T, D)
        recon = tokenizer.decode(latents)[0, :, : wav.shape[-1]].float().cpu()  # (1, S)
    if recon.shape[-1] < wav.shape[-1]:
        recon = torch.nn.functional.pad(recon, (0, wav.shape[-1] - recon.shape[-1]))

    limits = mel_limits(wav, rate)
    output = RoundTripOutput(
        input_wav=write_wav(folder / "input.wav", wav, rate),
        recon_wav=write_wav(folder / "reconstruction.wav", recon, rate),
        input_mel=mel_image(wav, rate, folder / "input-mel.png", title="input", limits=limits),
        recon_mel=mel_image(recon, rate, folder / "reconstruction-mel.png", title="reconstruction", limits=limits),
        sample_rate=rate,
        metrics=_metrics(wav, recon, rate),
        latents=_latent_summary(latents[0].cpu(), tokenizer),
        recon=recon,
    )
    return output


def _metrics(wav: torch.Tensor, recon: torch.Tensor, rate: int) -> dict[str, Any]:
    """The report's reconstruction metrics for one pair, by name; one that fails or is unavailable is
    None with its reason under ``unavailable``. (One by one rather than through
    ``reconstruction_metrics``: PESQ refuses clips it cannot align, and the others still count.)"""
    values: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    scores = [
        ("mel_distance", lambda: reconstruction.multiscale_mel_distance([wav], [recon], rate)),
        (
            f"mel_distance_{reconstruction.FLOOR_ROBUST_RANGE_DB:g}db",
            lambda: reconstruction.multiscale_mel_distance(
                [wav], [recon], rate, dynamic_range_db=reconstruction.FLOOR_ROBUST_RANGE_DB
            ),
        ),
        (
            "level_ratio_db",
            lambda: reconstruction.level_ratio([wav], [recon]),
        ),  # the unit in the name: a bare number on the page
        ("stft_distance", lambda: reconstruction.stft_distance([wav], [recon])),
        ("si_sdr_db", lambda: reconstruction.si_sdr([wav], [recon])),
        ("pesq", lambda: reconstruction.pesq_score([wav], [recon], rate)),
        ("stoi", lambda: reconstruction.stoi_score([wav], [recon], rate)),
    ]
    for name, score in scores:
        try:
            result = score()
        except LoditError as exc:
            values[name], unavailable[name] = None, str(exc)
            continue
        values[name] = None if math.isnan(result.value) else round(float(result.value), 4)
        if not result.available:
            unavailable[name] = result.details["unavailable"]
    if unavailable:
        values["unavailable"] = unavailable
    return values


def _latent_summary(latents: torch.Tensor, tokenizer) -> dict[str, Any]:
    """Shape, range and width use of one clip's ``(T, D)`` latent frames."""
    frames, dim = latents.shape
    channel_std = latents.std(dim=0, correction=0) if frames > 1 else torch.zeros(dim)
    summary: dict[str, Any] = {
        "frames": frames, "dim": dim, "frame_rate": float(tokenizer.latent_rate),
        "mean": round(float(latents.mean()), 4), "std": round(float(latents.std(correction=0)), 4),
        "min": round(float(latents.min()), 4), "max": round(float(latents.max()), 4),
        "channel_std_min": round(float(channel_std.min()), 4), "channel_std_max": round(float(channel_std.max()), 4),
    }
    if frames >= 2:
        stats = latent_statistics(latents, topk=(1, 8, 32, 128))
        summary["effective_rank"] = round(float(stats["effective_rank"]), 3)
        summary["topk_variance_fraction"] = {str(k): round(v, 4) for k, v in stats["topk_variance_fraction"].items()}
    else:
        summary["effective_rank"] = None  # one frame has no spread to measure
    return summary
