"""Speaker similarity: cosine between speaker embeddings of reference and generated speech.

:class:`SpeakerEmbedder` turns a 16 kHz utterance into an L2-normalised speaker embedding:

- ``resemblyzer`` (default, offline): Resemblyzer's GE2E ``VoiceEncoder`` (256-dim) with its own
  preprocessing (volume normalisation, long silences trimmed);
- ``wavlm``: a ``transformers`` ``WavLMForXVector`` speaker-verification model by hub name or
  local folder (e.g. ``microsoft/wavlm-base-plus-sv``, the kind of model papers report SIM with),
  its x-vector output. Input goes through the checkpoint's feature extractor, or a default
  ``Wav2Vec2FeatureExtractor`` (per-utterance zero mean, unit variance) if it has none.

:func:`speaker_similarity` is the mean cosine over (reference, generated) pairs, e.g. a TTS
prompt and the speech generated from it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lodit.data.audio import load_audio, mono_clip, resample
from lodit.errors import LoditError
from lodit.eval.embedders import model_label, quiet_loading
from lodit.eval.results import MetricResult

SAMPLE_RATE = 16000
Audio = str | os.PathLike | np.ndarray | torch.Tensor


class SpeakerEmbedder:
    """Speaker embeddings by ``name`` (``resemblyzer`` | ``wavlm``); ``model`` is required for wavlm."""

    def __init__(self, name: str = "resemblyzer", model: str | None = None, device: str = "cpu"):
        self.name, self.device = name, torch.device(device)
        if name == "resemblyzer":
            self._load_resemblyzer()
        elif name == "wavlm":
            if not model:
                raise LoditError(
                    "the wavlm speaker embedder needs a model: a hub name such as microsoft/wavlm-base-plus-sv "
                    "or a local WavLMForXVector folder"
                )
            self._load_wavlm(model)
        else:
            raise LoditError(f"unknown speaker embedder {name!r}; choose one of: resemblyzer, wavlm")

    def _load_resemblyzer(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its webrtcvad dependency warns about pkg_resources
                from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError:
            raise LoditError("speaker similarity needs resemblyzer: pip install resemblyzer 'setuptools<81'") from None
        self._encoder = VoiceEncoder(self.device, verbose=False)
        self._preprocess = preprocess_wav
        self.dim = 256
        self.description = "resemblyzer GE2E speaker encoder (offline)"

    def _load_wavlm(self, model: str) -> None:
        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WavLMForXVector

        local = Path(model).expanduser().exists()
        try:
            with quiet_loading():
                self._model, info = WavLMForXVector.from_pretrained(
                    model, output_loading_info=True, local_files_only=local
                )
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LoditError(
                f"cannot load the WavLM speaker model {model!r} ({reason}); pass a local folder or a hub name"
            ) from None
        missing = [k for k in info["missing_keys"] if "masked_spec_embed" not in k]
        if missing:
            raise LoditError(
                f"{model!r} is not a WavLMForXVector speaker-verification checkpoint ({len(missing)} weights missing, "
                f"e.g. {missing[0]}); use one fine-tuned for x-vectors such as microsoft/wavlm-base-plus-sv"
            )
        try:
            with quiet_loading():
                self._extractor = AutoFeatureExtractor.from_pretrained(model, local_files_only=local)
        except (OSError, ValueError):
            self._extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True)
        self._model = self._model.to(self.device).eval()
        self.dim = int(self._model.config.xvector_output_dim)
        self.description = f"wavlm x-vector {model_label(model)}"

    @torch.no_grad()
    def embed(self, audio: Audio, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """``(dim,)`` unit-norm embedding of one utterance (a path, or a mono waveform at ``sample_rate``)."""
        wav = _mono16k(audio, sample_rate)
        if self.name == "resemblyzer":
            prepared = self._preprocess(wav.numpy())
            if prepared.size == 0:
                raise LoditError("speaker embedding: the utterance is silent (nothing left after trimming silences)")
            vector = torch.from_numpy(np.asarray(self._encoder.embed_utterance(prepared), dtype=np.float32))
        else:
            inputs = self._extractor(wav.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            vector = self._model(**inputs).embeddings[0].float().cpu()
        return F.normalize(vector, dim=0)

    def embed_many(self, audio: Sequence[Audio], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """``(N, dim)`` unit-norm embeddings."""
        return torch.stack([self.embed(item, sample_rate) for item in audio])


def speaker_similarity(
    ref_wavs: Sequence[Audio],
    gen_wavs: Sequence[Audio],
    *,
    embedder: SpeakerEmbedder | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> MetricResult:
    """Mean cosine similarity of speaker embeddings over (reference, generated) pairs
    (Resemblyzer unless ``embedder`` is given); per-pair values in ``details``."""
    if len(ref_wavs) != len(gen_wavs) or not ref_wavs:
        raise LoditError(
            f"speaker similarity pairs clips one to one: got {len(ref_wavs)} references and {len(gen_wavs)} generated"
        )
    embedder = embedder or SpeakerEmbedder()
    ref = embedder.embed_many(ref_wavs, sample_rate)
    gen = embedder.embed_many(gen_wavs, sample_rate)
    cosines = (ref * gen).sum(1).tolist()
    return MetricResult("speaker_similarity", float(np.mean(cosines)), len(cosines), embedder.description,
                        {"per_pair": cosines})


def _mono16k(audio: Audio, sample_rate: int) -> torch.Tensor:
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, SAMPLE_RATE)[0]
    return resample(mono_clip(audio, what="speaker embedding"), sample_rate, SAMPLE_RATE)
