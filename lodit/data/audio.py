"""Audio I/O: read and write files with soundfile, resample with soxr, mix down, normalise.

Waveforms are float32 tensors shaped ``(channels, samples)``; batches are ``(batch, channels,
samples)``. Reading failures become :class:`~lodit.errors.LoditError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr
import torch

from lodit.errors import LoditError
from lodit.files import write_atomically
from lodit.outputs import check_output_folder

ChannelPolicy = Literal["mix", "first", "keep"]


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(sample_rate, frames, channels)`` of an audio file without reading its samples."""
    _check_audio_path(Path(path))
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for unreadable files
        raise LoditError(f"{path}: cannot read audio ({_reason(exc)}); is it a wav/flac/ogg/mp3 file?") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    channels: ChannelPolicy = "mix",
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Read ``path`` as float32 ``(channels, samples)``, resampled to ``sample_rate`` if given.

    ``channels``: ``mix`` averages to mono (the default), ``first`` keeps channel 0, ``keep``
    keeps them all. ``offset``/``duration`` (seconds) read only part of the file.
    """
    path = Path(path)
    _check_audio_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            native_rate = f.samplerate
            start = int(round(offset * native_rate))
            if start:
                f.seek(min(start, f.frames))
            frames = -1 if duration is None else int(round(duration * native_rate))
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (samples, channels)
    except LoditError:
        raise
    except Exception as exc:
        raise LoditError(f"{path}: cannot read audio ({_reason(exc)}); is it a wav/flac/ogg/mp3 file?") from None
    bad = data.size - int(np.isfinite(data).sum())
    if bad:
        # Float files can hold NaN/inf; one such sample makes every loss and latent non-finite.
        raise LoditError(f"{path}: {bad} of {data.size} samples are NaN or infinite (a corrupt or badly "
                         "exported float file); re-export the clip")
    wav = np.ascontiguousarray(data.T)  # (channels, samples)
    wav = apply_channel_policy(wav, channels)
    if sample_rate is not None and sample_rate != native_rate:
        wav = resample_np(wav, native_rate, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write ``(channels, samples)`` or ``(samples,)`` audio; the format follows the suffix.

    Written atomically (temp file + rename) so an interrupted write never leaves a broken file.
    """
    path = Path(path)
    data = wav.detach().float().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2:
        raise ValueError(f"save_audio expects (channels, samples), got shape {tuple(data.shape)}")
    if path.is_dir():
        raise LoditError(f"{path}: is a folder; give the name of the audio file to write (e.g. out.wav)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        check_output_folder(path.parent, "audio output folder")
        raise LoditError(
            f"{path}: cannot create its folder ({_reason(exc)}); choose a folder you can write to"
        ) from None
    try:
        write_atomically(path, lambda tmp: sf.write(str(tmp), np.clip(data.T, -1.0, 1.0), sample_rate))
    except (TypeError, ValueError, sf.LibsndfileError, OSError) as exc:
        check_output_folder(path.parent, "audio output folder")  # a folder we can't write: say that
        if isinstance(exc, OSError):  # the folder is writable: the disk is full or failing
            raise LoditError(f"{path}: cannot write audio ({_reason(exc)}); check the free disk space") from None
        raise LoditError(f"{path}: cannot write audio ({_reason(exc)}); use a .wav, .flac, .ogg or .mp3 name") from None
    return path


def mono_clip(wav: torch.Tensor | np.ndarray, *, what: str) -> torch.Tensor:
    """A non-empty mono clip as float32 ``(S,)`` on the CPU, from ``(S,)``, ``(1, S)`` or any shape
    whose other dimensions are 1; anything else is a LoditError that starts with ``what``."""
    wav = torch.as_tensor(np.asarray(wav) if isinstance(wav, np.ndarray) else wav).detach().float().cpu()
    if wav.dim() > 1 and sum(n > 1 for n in wav.shape) <= 1:
        wav = wav.reshape(-1)
    if wav.dim() != 1 or wav.numel() == 0:
        raise LoditError(f"{what}: expected a non-empty mono clip (S,) or (1, S), got shape {tuple(wav.shape)}")
    return wav


def apply_channel_policy(wav: np.ndarray, policy: ChannelPolicy) -> np.ndarray:
    """``(channels, samples)`` -> mono by mixing, by taking the first channel, or unchanged."""
    if policy == "mix":
        return wav.mean(axis=0, keepdims=True)
    if policy == "first":
        return wav[:1]
    if policy == "keep":
        return wav
    raise LoditError(f"unknown channel policy {policy!r}; choose mix, first or keep")


def resample_np(wav: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of ``(channels, samples)`` with soxr (high quality)."""
    if orig_rate == new_rate:
        return wav
    out = soxr.resample(np.ascontiguousarray(wav.T), orig_rate, new_rate, quality="HQ")  # (samples, ch)
    return np.ascontiguousarray(out.T if out.ndim == 2 else out[None])


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample a ``(..., samples)`` tensor (any leading shape) with soxr."""
    if orig_rate == new_rate:
        return wav
    lead = wav.shape[:-1]
    flat = wav.detach().reshape(-1, wav.shape[-1]).float().cpu().numpy()  # (N, S)
    out = resample_np(flat, orig_rate, new_rate)  # (N, S')
    return torch.from_numpy(out).reshape(*lead, out.shape[-1]).to(wav.device)


def normalize_peak(wav: torch.Tensor, peak: float = 0.95) -> torch.Tensor:
    """Scale so the largest absolute sample is ``peak`` (silence is returned unchanged)."""
    top = wav.abs().amax()
    return wav if top <= 0 else wav * (peak / top)


def normalize_loudness(wav: torch.Tensor, sample_rate: int, target_lufs: float = -23.0) -> torch.Tensor:
    """Integrated-loudness (ITU-R BS.1770) normalisation with pyloudnorm (``lodit[eval]``).

    Clips too short or too quiet to measure are returned unchanged.
    """
    try:
        import pyloudnorm
    except ImportError:
        raise LoditError("loudness normalisation needs pyloudnorm: pip install 'lodit[eval]'") from None
    data = wav.detach().float().cpu().numpy().T  # (samples, channels)
    meter = pyloudnorm.Meter(sample_rate)
    try:
        loudness = meter.integrated_loudness(data)
    except ValueError:  # shorter than one gating block
        return wav
    if not np.isfinite(loudness):
        return wav
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return wav * float(gain)


def _check_audio_path(path: Path) -> None:
    if path.is_dir():
        raise LoditError(f"{path}: is a folder, not an audio file; give a wav/flac/ogg/mp3 file")
    if not path.is_file():
        raise LoditError(f"{path}: audio file not found")


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
