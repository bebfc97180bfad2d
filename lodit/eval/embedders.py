"""Audio embedders for FAD and probes, chosen by name from :data:`EMBEDDERS`.

Every embedder maps a mono clip at its own ``sample_rate`` to frame embeddings ``(T, dim)``
(:meth:`Embedder.embed_frames`) and a clip embedding ``(dim,)``, the mean over frames
(:meth:`Embedder.embed`); :meth:`Embedder.embed_files` loads, mixes down and resamples files and
returns ``(N, dim)``, through an :class:`~lodit.eval.embedding_cache.EmbeddingCache` when given.
FAD in lodit is computed over these clip embeddings (one per clip).

- ``whisper``: Whisper's encoder states at 50 Hz (:mod:`lodit.latent_tokenizer.semantic`; ``model``
  = ``offline:base`` (default) / ``offline:tiny.en`` / a hub name / a local folder, ``layer`` as in
  :class:`~lodit.latent_tokenizer.semantic.SemanticEncoderConfig`).
- ``clap``: the audio tower of a ``transformers`` CLAP model (``ClapModel`` + ``ClapProcessor``, by
  hub name or local folder), loaded by :class:`ClapAudioText`, which the CLAP score shares. The
  clip is resampled to the processor's rate (48 kHz for LAION-CLAP) and cut into consecutive
  windows of its ``max_length_s`` (10 s); each window (a short last one is repeat-padded by the
  processor) gives one projected, unit-norm frame. Cutting the windows here keeps long clips
  deterministic (the processor would crop a random 10 s).
- ``encodec``: ``transformers``' ``EncodecModel`` encoder output — the continuous embeddings
  *before* residual vector quantisation, one per encoder frame (75 Hz for the 24 kHz model). A
  mono clip is repeated over the model's channels; for models configured with ``normalize`` the
  clip is divided by its RMS first, as EnCodec does before encoding.
- ``tokenizer``: a lodit tokenizer's own features (``model`` = its folder): ``tokenizer_level``
  ``latent`` (the bottleneck's deterministic output, what the DiT sees), ``encoder`` (the encoder
  output before the bottleneck) or the name of an encoder ``aux`` tensor.
- ``vggish`` / ``pann``: through the optional ``frechet-audio-distance`` package, only when it is
  installed and its weights are already in torch hub's folder (nothing is downloaded here).
  VGGish gives 128-dim frames every 0.96 s; PANN (CNN14, 16 kHz) one 2048-dim vector per clip.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from lodit.data.audio import audio_info, load_audio, mono_clip, resample
from lodit.devices import choose_device
from lodit.errors import LoditError
from lodit.fingerprints import files_fingerprint, weights_fingerprint
from lodit.registry import Registry


class EmbeddingStore(Protocol):
    """Where :meth:`Embedder.embed_files` may keep embeddings (e.g. an
    :class:`~lodit.eval.embedding_cache.EmbeddingCache`)."""

    def embed_set(self, embedder: Embedder, paths: Sequence[str | os.PathLike], *,
                  segments: Sequence[tuple[float, float | None]] | None = None, progress: bool = False) -> torch.Tensor:
        """``(N, dim)`` embeddings of ``paths`` by ``embedder``, computing only the ones not stored."""


NO_CLAP_MODEL = (
    "no CLAP model given (a hub name or local folder: --clap-model for lodit evaluate, "
    "evaluation.clap_model in an experiment config)"
)
Audio = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass
class EmbedderConfig:
    """Which embedder (``name``) and model; ``layer`` for whisper, ``tokenizer_level`` for tokenizer."""

    name: str = "whisper"
    model: str = "offline:base"
    layer: int = -1
    tokenizer_level: str = "latent"
    device: str = "auto"


class Embedder(abc.ABC):
    """Clip and frame embeddings of mono audio at :attr:`sample_rate`."""

    name: str
    description: str  # the model in reports, e.g. "whisper base encoder (offline CTranslate2 bundle), layer -1, ..."
    sample_rate: int
    dim: int

    @abc.abstractmethod
    def embed_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """``(S,)`` or ``(1, S)`` mono audio at :attr:`sample_rate` -> ``(T, dim)`` float32 on CPU."""

    @abc.abstractmethod
    def identity(self) -> str:
        """Changes whenever the embeddings would (model, weights, options): the cache key."""

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """``(dim,)`` clip embedding: the mean over frames."""
        return self.embed_frames(wav).mean(0)

    def load(self, path: str | os.PathLike, offset: float = 0.0, duration: float | None = None) -> torch.Tensor:
        """A file (or the segment ``offset`` .. ``offset + duration`` seconds of it) as mono
        ``(S,)`` at :attr:`sample_rate`."""
        return load_audio(path, self.sample_rate, offset=offset, duration=duration)[0]

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        cache: EmbeddingStore | None = None,
        *,
        segments: Sequence[tuple[float, float | None]] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``(N, dim)`` clip embeddings of audio files (only the cache's misses are computed).
        ``segments`` gives an ``(offset, duration)`` in seconds per file (``None`` = to the end)."""
        if cache is not None:
            return cache.embed_set(self, paths, segments=segments, progress=progress)
        segments = normalize_segments(paths, segments)
        items = list(zip(paths, segments))
        return torch.stack([self.embed(self.load(p, *seg)) for p, seg in _progress(items, progress, self.name)])

    def _mono(self, wav: torch.Tensor) -> torch.Tensor:
        return mono_clip(wav, what=f"embedder {self.name}")


EMBEDDERS: Registry[Callable[[EmbedderConfig], Embedder]] = Registry("embedder")


def build_embedder(cfg: EmbedderConfig) -> Embedder:
    """The embedder ``cfg.name`` names, loaded and frozen."""
    return EMBEDDERS.get(cfg.name)(cfg)


def set_durations(
    paths: Sequence[str | os.PathLike], segments: Sequence[tuple[float, float | None]] | None = None
) -> dict[str, float]:
    """Clip-duration summary of a set (seconds): ``n``, ``total``, ``mean``, ``min``, ``max`` —
    what a FAD number is reported with. ``segments`` gives the ``(offset, duration)`` of each
    clip inside its file (``None`` = whole files; a ``None`` duration = to the end of the file),
    as :meth:`Embedder.embed_files` takes them."""
    durations = []
    for path, (offset, duration) in zip(paths, normalize_segments(paths, segments)):
        rate, frames, _ = audio_info(path)
        remaining = max(frames / rate - offset, 0.0)  # an offset past the end leaves nothing
        durations.append(remaining if duration is None else min(remaining, duration))
    if not durations:
        return {"n": 0, "total": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0}
    return {"n": len(durations), "total": float(np.sum(durations)), "mean": float(np.mean(durations)),
            "min": float(np.min(durations)), "max": float(np.max(durations))}


def normalize_segments(
    paths: Sequence, segments: Sequence[tuple[float, float | None]] | None
) -> list[tuple[float, float | None]]:
    """One ``(offset, duration)`` per path (whole files when ``segments`` is None)."""
    if segments is None:
        return [(0.0, None)] * len(paths)
    segments = [(float(offset), None if duration is None else float(duration)) for offset, duration in segments]
    if len(segments) != len(paths):
        raise LoditError(f"{len(paths)} audio files but {len(segments)} segments; give one (offset, duration) per file")
    return segments


def _progress(items: Sequence, enabled: bool, what: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"embedding ({what})", unit="clip")


def _require_model(cfg: EmbedderConfig, example: str) -> str:
    if not cfg.model or cfg.model.startswith("offline:"):
        raise LoditError(
            f"the {cfg.name} embedder needs a model: a hub name (e.g. {example}) or a local folder "
            f"(offline bundles are Whisper only); got model={cfg.model!r}"
        )
    return cfg.model


# ----------------------------------------------------------------------------- loading helpers


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' load reports and "Loading weights" bars while a model loads."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def model_label(source: str) -> str:
    """A hub name as given, a local folder by its own name."""
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else source


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` return a tensor in transformers 4 and a model output in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapAudioText:
    """A CLAP model with its processor: unit-norm text and audio embeddings in the shared space."""

    def __init__(self, model: str, device: str = "auto"):
        from transformers import ClapModel, ClapProcessor

        if not model:
            raise LoditError(NO_CLAP_MODEL)
        local = Path(model).expanduser().exists()
        try:
            with quiet_loading():
                self.model, info = ClapModel.from_pretrained(model, output_loading_info=True, local_files_only=local)
                self.processor = ClapProcessor.from_pretrained(model, local_files_only=local)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LoditError(
                f"cannot load the CLAP model {model!r} ({reason}); pass a local folder or a hub name"
            ) from None
        missing = [k for k in info["missing_keys"] if "position_ids" not in k]
        if missing:
            raise LoditError(
                f"{model!r} is not a full CLAP checkpoint ({len(missing)} weights missing, e.g. {missing[0]})"
            )
        self.device = choose_device(device, option="embedder device")
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        extractor = self.processor.feature_extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.window_samples = int(round(extractor.max_length_s * self.sample_rate))
        self.dim = int(self.model.config.projection_dim)
        self.label = model_label(model)
        self._fingerprint: str | None = None

    @property
    def description(self) -> str:
        return f"clap {self.label}"

    def identity(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return f"clap|{self.label}|weights={self._fingerprint}|window={self.window_samples}"

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, dim)`` unit-norm text embeddings."""
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return F.normalize(_pooled(self.model.get_text_features(**tokens)).float(), dim=-1).cpu()

    @torch.no_grad()
    def window_embeddings(self, wav: torch.Tensor) -> torch.Tensor:
        """``(windows, dim)`` unit-norm embeddings of a mono clip at :attr:`sample_rate`."""
        wav = wav.detach().float().cpu().reshape(-1)
        if wav.numel() == 0:
            raise LoditError("CLAP cannot embed an empty clip")
        windows = [w.numpy() for w in torch.split(wav, self.window_samples)]
        inputs = self.processor.feature_extractor(windows, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return F.normalize(_pooled(self.model.get_audio_features(**inputs)).float(), dim=-1).cpu()

    def audio_embedding(self, audio: Audio, sample_rate: int | None = None) -> torch.Tensor:
        """``(dim,)`` unit-norm clip embedding of a path or a mono waveform at ``sample_rate``."""
        return F.normalize(self.window_embeddings(self.load(audio, sample_rate)).mean(0), dim=0)

    def load(self, audio: Audio, sample_rate: int | None) -> torch.Tensor:
        """A path or waveform as mono ``(S,)`` at :attr:`sample_rate`."""
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, self.sample_rate)[0]
        if sample_rate is None:
            raise LoditError("CLAP needs the sample rate of in-memory audio; pass sample_rate")
        wav = torch.as_tensor(np.asarray(audio) if isinstance(audio, np.ndarray) else audio).float().squeeze()
        if wav.dim() != 1:
            raise LoditError(f"CLAP expects mono clips (S,), got shape {tuple(wav.shape)}; mix down first")
        return resample(wav, sample_rate, self.sample_rate)



# ----------------------------------------------------------------------------- whisper


@EMBEDDERS.register("whisper")
class WhisperEmbedder(Embedder):
    """Whisper encoder states (50 Hz frames), mean-pooled for the clip embedding."""

    name = "whisper"

    def __init__(self, cfg: EmbedderConfig):
        from lodit.latent_tokenizer.semantic import SemanticEncoderConfig, build_semantic_encoder

        self.encoder = build_semantic_encoder(
            SemanticEncoderConfig(name="whisper", model=cfg.model, layer=cfg.layer, target_rate=50.0)
        ).to(choose_device(cfg.device, option="embedder device"))
        self.sample_rate = self.encoder.sample_rate
        self.dim = self.encoder.dim
        source = "offline CTranslate2 bundle" if cfg.model.startswith("offline:") else "transformers"
        label = cfg.model.split(":", 1)[1] if cfg.model.startswith("offline:") else model_label(cfg.model)
        self.description = f"whisper {label} encoder ({source}), layer {cfg.layer}, mean over frames"

    def embed_frames(self, wav: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._mono(wav)[None])[0].float().cpu()  # (T, dim)

    def identity(self) -> str:
        return f"embedder=whisper|{self.encoder.identity()}"


# ----------------------------------------------------------------------------- clap


@EMBEDDERS.register("clap")
class ClapEmbedder(Embedder):
    """CLAP audio embeddings of 10-s windows (unit norm); the clip embedding is their mean."""

    name = "clap"

    def __init__(self, cfg: EmbedderConfig):
        self.clap = ClapAudioText(_require_model(cfg, "laion/clap-htsat-unfused"), cfg.device)
        self.sample_rate, self.dim = self.clap.sample_rate, self.clap.dim
        self.description = f"{self.clap.description} audio tower"

    def embed_frames(self, wav: torch.Tensor) -> torch.Tensor:
        return self.clap.window_embeddings(self._mono(wav))  # (windows, dim)

    def identity(self) -> str:
        return f"embedder=clap|{self.clap.identity()}"


# ----------------------------------------------------------------------------- encodec


@EMBEDDERS.register("encodec")
class EncodecEmbedder(Embedder):
    """EnCodec encoder output (continuous, before quantisation), one frame per encoder step."""

    name = "encodec"

    def __init__(self, cfg: EmbedderConfig):
        from transformers import EncodecModel

        source = _require_model(cfg, "facebook/encodec_24khz")
        local = Path(source).expanduser().exists()
        try:
            with quiet_loading():
                model = EncodecModel.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LoditError(
                f"cannot load the EnCodec model {source!r} ({reason}); pass a local folder or a hub name"
            ) from None
        self.device = choose_device(cfg.device, option="embedder device")
        self.model = model.to(self.device).eval().requires_grad_(False)
        config = model.config
        self.sample_rate, self.dim = int(config.sampling_rate), int(config.hidden_size)
        self.channels, self.normalize = int(config.audio_channels), bool(config.normalize)
        self.label = model_label(source)
        self.description = f"encodec {self.label} encoder (continuous, pre-quantisation)"
        self._fingerprint: str | None = None

    @torch.no_grad()
    def embed_frames(self, wav: torch.Tensor) -> torch.Tensor:
        wav = self._mono(wav)
        if self.normalize:
            wav = wav / (wav.pow(2).mean().sqrt() + 1e-8)
        batch = wav[None, None].expand(1, self.channels, -1).to(self.device)  # (1, C, S)
        return self.model.encoder(batch)[0].T.float().cpu()  # (dim, T) -> (T, dim)

    def identity(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model.encoder)
        return f"embedder=encodec|{self.label}|weights={self._fingerprint}|normalize={self.normalize}"


# ----------------------------------------------------------------------------- lodit tokenizer


@EMBEDDERS.register("tokenizer")
class TokenizerEmbedder(Embedder):
    """A lodit tokenizer's features at ``tokenizer_level`` (``latent``, ``encoder`` or an aux name)."""

    name = "tokenizer"

    def __init__(self, cfg: EmbedderConfig):
        from lodit.latent_tokenizer.tokenizer import Tokenizer

        if not cfg.model or cfg.model.startswith("offline:"):
            raise LoditError(f"the tokenizer embedder needs model= a lodit tokenizer folder; got {cfg.model!r}")
        self.folder = Path(cfg.model).expanduser()
        self.tokenizer = Tokenizer.from_pretrained(
            self.folder, map_location=choose_device(cfg.device, option="embedder device")
        )
        self.level = cfg.tokenizer_level
        self.sample_rate = self.tokenizer.sample_rate
        self.dim = self._features(torch.zeros(self.tokenizer.hop_length)).shape[-1]
        self.description = f"lodit tokenizer {self.folder.resolve().name} ({self.level} features)"

    @torch.no_grad()
    def _features(self, wav: torch.Tensor) -> torch.Tensor:
        from lodit.latent_tokenizer.encoder import pad_to_hop
        from lodit.latent_tokenizer.tokenizer import as_batch

        if self.level == "latent":
            return self.tokenizer.encode(wav)[0]
        parameter = next(self.tokenizer.parameters())
        batch = pad_to_hop(as_batch(wav).to(parameter.device, parameter.dtype), self.tokenizer.hop_length)
        encoded = self.tokenizer.encoder(batch)
        if self.level == "encoder":
            return encoded.latent[0]
        if self.level in encoded.aux:
            features = encoded.aux[self.level]
            return features[0] if features.dim() == 3 else features
        choices = ", ".join(["latent", "encoder", *sorted(encoded.aux)])
        raise LoditError(
            f"embedder.tokenizer_level={self.level!r} is not a level of this tokenizer; choose one of: {choices}"
        )

    def embed_frames(self, wav: torch.Tensor) -> torch.Tensor:
        return self._features(self._mono(wav)).float().cpu()  # (T, dim)

    def identity(self) -> str:
        producer = self.tokenizer.identity()
        return (f"embedder=tokenizer|{producer['name']}|config={producer['config_hash']}"
                f"|files={files_fingerprint(self.folder)}|level={self.level}")


# ----------------------------------------------------------------------------- vggish / pann


class FrechetAudioDistanceEmbedder(Embedder):
    """VGGish or PANN through the ``frechet-audio-distance`` package (16 kHz)."""

    sample_rate = 16000
    weight_files: tuple[str, ...] = ()  # files (relative to torch hub's folder) that must exist
    package_model = ""

    def __init__(self, cfg: EmbedderConfig):
        install = "pip install frechet-audio-distance (needs its weights present)"
        try:
            from frechet_audio_distance import FrechetAudioDistance
        except ImportError:
            raise LoditError(f"the {self.name} embedder needs the frechet-audio-distance package: {install}") from None
        hub = Path(torch.hub.get_dir())
        absent = [name for name in self.weight_files if not (hub / name).exists()]
        if absent:
            raise LoditError(
                f"the {self.name} embedder's weights are not in {hub} (missing {absent[0]}); run "
                f"frechet-audio-distance once where the network is reachable: {install}"
            )
        try:
            self.fad = FrechetAudioDistance(model_name=self.package_model, sample_rate=self.sample_rate,
                                            use_pca=False, use_activation=False, verbose=False)
        except Exception as exc:  # the package raises whatever torch.hub / its models raise
            raise LoditError(
                f"frechet-audio-distance could not load {self.name} ({type(exc).__name__}: {exc})"
            ) from None
        self.description = f"{self.name} (frechet-audio-distance)"

    def embed_frames(self, wav: torch.Tensor) -> torch.Tensor:
        wav = self._mono(wav).numpy()
        try:
            frames = self.fad.get_embeddings([wav], sr=self.sample_rate)
        except ValueError:  # the package swallows model errors and then has nothing to concatenate
            raise LoditError(f"{self.name} produced no embedding for a clip of {wav.size / self.sample_rate:.2f} s "
                             "(VGGish needs at least 0.96 s)") from None
        return torch.as_tensor(np.asarray(frames), dtype=torch.float32).reshape(-1, self.dim)

    def identity(self) -> str:
        return f"embedder={self.name}|frechet-audio-distance|{'|'.join(self.weight_files)}"


@EMBEDDERS.register("vggish")
class VGGishEmbedder(FrechetAudioDistanceEmbedder):
    name, package_model, dim = "vggish", "vggish", 128
    # torch.hub's copy of the torchvggish repository and the weights its entry point loads.
    weight_files = (
        "harritaylor_torchvggish_master",
        "checkpoints/vggish-10086976.pth",
        "checkpoints/vggish_pca_params-970ea276.pth",
    )


@EMBEDDERS.register("pann")
class PANNEmbedder(FrechetAudioDistanceEmbedder):
    name, package_model, dim = "pann", "pann", 2048
    weight_files = ("Cnn14_16k_mAP%3D0.438.pth",)
