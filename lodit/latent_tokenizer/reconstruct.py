"""``lodit reconstruct``: one audio file through a tokenizer and back, with how close it came.

Reads the input at the tokenizer's sample rate (channels mixed to mono), encodes it with
:meth:`Tokenizer.encode` (the deterministic path, as ``lodit encode`` does), decodes it, writes
the reconstruction at that rate and prints how close the round trip came:

- the multi-resolution log-mel L1 distance at the default resolutions of
  :class:`~lodit.latent_tokenizer.losses.TokenizerLossConfig` (the quantity tokenizer training
  minimises and ``lodit.eval`` reports as ``mel_distance``; lower is better, 0 is identical);
- the level ratio, ``20 log10(RMS(reconstruction) / RMS(input))`` in dB (0 dB = as loud; a
  reconstruction can match the mel distance of a quieter one while sounding much fainter);
- SI-SDR in dB (scale-invariant signal-to-distortion ratio: both signals zero-mean, the
  reference scaled by ``a = <est, ref> / ||ref||^2``, ``10 log10(||a ref||^2 / ||est - a ref||^2)``;
  higher is better). It is phase-sensitive, so a GAN vocoder that sounds right can still score low.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lodit.data.audio import load_audio, save_audio
from lodit.devices import choose_device
from lodit.errors import LoditError
from lodit.latent_tokenizer.losses import MultiResolutionMelLoss, TokenizerLossConfig
from lodit.latent_tokenizer.tokenizer import Tokenizer

_EPS = 1e-8


@dataclass
class RoundTrip:
    """A reconstruction and how close it is to its input."""

    recon: torch.Tensor  # (1, S) at sample_rate
    sample_rate: int
    frames: int  # latent frames the clip was coded into
    latent_dim: int
    mel_distance: float
    level_db: float  # RMS of the reconstruction over RMS of the input, in dB
    si_sdr: float  # dB

    def line(self) -> str:
        seconds = self.recon.shape[-1] / self.sample_rate
        return (f"{seconds:.2f} s at {self.sample_rate} Hz -> {self.frames} x {self.latent_dim} latents; "
                f"mel distance {self.mel_distance:.4f}, level {self.level_db:+.1f} dB, SI-SDR {self.si_sdr:.2f} dB")


def si_sdr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """SI-SDR of a mono ``estimate`` against its ``reference`` (same length), in dB, computed in float64."""
    ref = reference.double().flatten()
    est = estimate.double().flatten()
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref + _EPS) * ref
    noise = est - target
    return float(10.0 * torch.log10((target @ target + _EPS) / (noise @ noise + _EPS)))


def mel_distance(reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int) -> float:
    """Multi-resolution log-mel L1 at the default loss resolutions."""
    loss = MultiResolutionMelLoss(sample_rate, TokenizerLossConfig().mel_resolutions).to(reference.device)
    with torch.no_grad():
        return float(loss(estimate.reshape(1, 1, -1), reference.reshape(1, 1, -1)))


def level_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """``20 log10(RMS(estimate) / RMS(reference))``: 0 dB is the same level, -6 dB half the amplitude."""
    ref_rms = reference.double().pow(2).mean().sqrt().clamp(min=_EPS)
    est_rms = estimate.double().pow(2).mean().sqrt().clamp(min=_EPS)
    return float(20.0 * torch.log10(est_rms / ref_rms))


def round_trip(tokenizer: Tokenizer, wav: torch.Tensor) -> RoundTrip:
    """Encode and decode mono ``wav`` ``(1, S)`` (at the tokenizer's rate) and measure the result."""
    latents = tokenizer.encode(wav)  # (1, T, D)
    recon = tokenizer.decode(latents)[0, :, : wav.shape[-1]].float().cpu()  # (1, S)
    return RoundTrip(
        recon=recon,
        sample_rate=tokenizer.sample_rate,
        frames=latents.shape[1],
        latent_dim=latents.shape[2],
        mel_distance=mel_distance(wav, recon, tokenizer.sample_rate),
        level_db=level_db(wav, recon),
        si_sdr=si_sdr_db(wav, recon),
    )


def reconstruct_file(
    tokenizer_dir: str | os.PathLike,
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    device: str | None = None,
    use_ema: bool = True,
) -> RoundTrip:
    """Write ``target``, the tokenizer's reconstruction of audio file ``source``; return the measurements."""
    if Path(target).resolve() == Path(source).resolve():
        raise LoditError(f"{target}: is the input file; write the reconstruction to another path")
    tokenizer = Tokenizer.from_pretrained(
        tokenizer_dir, use_ema=use_ema, map_location=choose_device(device, option="--device")
    )
    wav = load_audio(source, tokenizer.sample_rate, channels="mix")  # (1, S)
    if wav.shape[-1] == 0:
        raise LoditError(f"{source}: the file holds no audio samples; give a non-empty recording")
    result = round_trip(tokenizer, wav)
    save_audio(target, result.recon, tokenizer.sample_rate)
    return result
