"""Audio in and out of the app: page audio checked and resampled, wavs and mel-spectrogram images written.

Audio reaches the app from an upload or a microphone recording as a file path (what the page's
audio widgets hand over) or as ``(sample_rate, array)`` (gradio's numpy form, int16 or float,
``(S,)`` or ``(S, channels)``). :func:`read_audio_input` turns either into a mono float32 ``(1, S)``
tensor at the model's rate, and refuses, with one line naming the fix, what the model can't use:
nothing given, an unreadable file, no samples, non-finite samples, a rate below the model's (an
upsampled 8 kHz recording has nothing above 4 kHz, which a listener would blame on the model), or a
clip longer than the app accepts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lodit.data.audio import audio_info, load_audio, resample_np, save_audio
from lodit.errors import LoditError
from lodit.files import write_atomically

AudioInput = Any  # a path, (sample_rate, np.ndarray), or None

MEL_BINS = 80
MEL_RANGE = 9.0  # natural-log units shown below the loudest bin (about 78 dB)


def _array_to_float(data: np.ndarray) -> np.ndarray:
    """gradio's sample array as float32 ``(channels, S)`` in [-1, 1]."""
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise LoditError(f"audio arrays must be (samples,) or (samples, channels), got shape {data.shape}")
    if np.issubdtype(data.dtype, np.integer):
        # Integer PCM: full scale is the type's range (int16 recordings are the microphone's usual form).
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return np.ascontiguousarray(data.T, dtype=np.float32)


def read_audio_input(
    value: AudioInput, sample_rate: int, *, what: str = "audio", max_seconds: float | None = None,
) -> torch.Tensor:
    """``value`` (a path or ``(rate, array)``) as mono float32 ``(1, S)`` at ``sample_rate``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LoditError(f"{what}: none given; upload a file or record one")
    if isinstance(value, (str, os.PathLike)):
        rate, frames, _channels = audio_info(value)
        if rate < sample_rate:
            raise _low_rate(what, rate, sample_rate)
        if max_seconds is not None and frames / rate > max_seconds:
            raise _too_long(what, frames / rate, max_seconds)
        wav = load_audio(value, sample_rate, channels="mix")
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        rate, data = int(value[0]), _array_to_float(value[1])
        if rate <= 0:
            raise LoditError(f"{what}: sample rate {rate} Hz is not a rate; record or upload the audio again")
        if rate < sample_rate:
            raise _low_rate(what, rate, sample_rate)
        if max_seconds is not None and data.shape[-1] / rate > max_seconds:
            raise _too_long(what, data.shape[-1] / rate, max_seconds)
        mono = data.mean(axis=0, keepdims=True)
        wav = torch.from_numpy(
            np.ascontiguousarray(resample_np(mono, rate, sample_rate) if rate != sample_rate else mono)
        )
    else:
        raise LoditError(f"{what}: expected an audio file or (sample_rate, samples), got {type(value).__name__}")
    if wav.shape[-1] == 0:
        raise LoditError(f"{what}: the recording holds no samples; record or upload a non-empty clip")
    if not torch.isfinite(wav).all():
        raise LoditError(f"{what}: the audio contains NaN or infinite samples; export it again as PCM wav")
    return wav.reshape(1, -1).float()


def _low_rate(what: str, rate: int, sample_rate: int) -> LoditError:
    return LoditError(f"{what}: recorded at {rate} Hz, below the model's {sample_rate} Hz (upsampling cannot restore "
                      f"the missing high band); give audio at {sample_rate} Hz or more")


def _too_long(what: str, seconds: float, max_seconds: float) -> LoditError:
    return LoditError(f"{what}: {seconds:.1f} s is longer than the {max_seconds:g} s the app accepts; trim it")


def write_wav(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int) -> Path:
    """A mono ``(1, S)`` / ``(S,)`` clip as a wav file (atomic, via :func:`~lodit.data.audio.save_audio`)."""
    return save_audio(path, wav.detach().float().cpu().reshape(1, -1), sample_rate)


def log_mel(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Natural-log mel spectrogram ``(MEL_BINS, frames)`` with ~64 ms windows and 75 % overlap."""
    from lodit.latent_tokenizer.frontend import LogMel

    n_fft = 2 ** round(math.log2(0.064 * sample_rate))
    mel = LogMel(sample_rate, n_fft, n_fft // 4, MEL_BINS)
    with torch.no_grad():
        return mel(wav.detach().float().cpu().reshape(1, -1))[0]


def mel_limits(wav: torch.Tensor, sample_rate: int) -> tuple[float, float]:
    """Colour range of a clip's mel image: its loudest bin and :data:`MEL_RANGE` below. Passing one
    clip's limits to another's image puts both on one scale (a quieter reconstruction looks darker)."""
    top = float(log_mel(wav, sample_rate).max())
    return top - MEL_RANGE, top


def mel_image(
    wav: torch.Tensor, sample_rate: int, path: str | os.PathLike, *, title: str = "",
    limits: tuple[float, float] | None = None,
) -> Path:
    """A PNG of the clip's log-mel spectrogram (time in seconds against mel bin), written atomically."""
    from matplotlib.figure import Figure

    mel = log_mel(wav, sample_rate).numpy()
    low, high = limits if limits is not None else (float(mel.max()) - MEL_RANGE, float(mel.max()))
    seconds = wav.shape[-1] / sample_rate
    fig = Figure(figsize=(6.0, 2.2), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                      extent=(0.0, seconds, 0, mel.shape[0]), interpolation="nearest")
    ax.set_xlabel("seconds", fontsize=8)
    ax.set_ylabel("mel bin", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, pad=0.01).ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
