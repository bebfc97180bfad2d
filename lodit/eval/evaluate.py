"""``lodit evaluate``: generated audio (a ``lodit sample`` folder) against a reference manifest -> ``metrics.json``.

Input: a samples folder holding the wav files and ``samples.json`` written by ``lodit sample``
(per sample its file, prompt, transcript, reference audio, task and seconds; the sampler settings,
wall time and real-time factor), and a reference manifest (the real clips the generated ones
should resemble).

Metrics, each a :class:`~lodit.eval.results.MetricResult` with its value, its ``n`` and the model
that produced it (a metric that can't be computed is still listed, NaN, with the reason):

- ``fad``: Fréchet audio distance between the embeddings (``--embedder``, default the offline
  Whisper base encoder) of every generated clip and every reference clip, with both sets' clip
  durations; and, when the samples cover several tasks, ``fad_tta`` / ``fad_ttm`` / ``fad_tts``
  against the reference clips of the matching domain (audio / music / speech).
- ``clap_score``: prompt-audio agreement of the samples that have a caption, with the CLAP model
  given (``--clap-model``); unavailable without one (no CLAP weights ship offline).
- ``wer``: word error rate of the TTS samples (those with a transcript) transcribed by the ASR
  model (``--asr-model``, default the offline Whisper tiny.en); a fraction (0.05 = 5 %).
- ``speaker_similarity``: for each TTS sample, the speaker-embedding cosine to its reference
  audio: the voice prompt it was generated from, else the reference clip with the same transcript
  (same sentence, same speaker).
- ``rtf`` and ``nfe``: sampling speed, copied from ``samples.json`` (wall seconds per second of
  audio, and network evaluations per solver run).

When reference rows carry the demo dataset's caption labels, ``metrics.json`` also has an
``adherence`` section (:mod:`lodit.eval.adherence`): per caption attribute (event count, pitch,
tempo, key, ...) the share of samples whose audio shows what their prompt asked for, its chance
level, and the estimators' own accuracy on the reference clips. Unlabelled references give none.

:class:`Evaluator` keeps the loaded models, so a comparison that evaluates many sample folders
loads each model once; :func:`evaluate_samples` is the one-call form.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lodit.conditioning.tasks import TASKS, task_from_domain
from lodit.data.manifest import read_manifest
from lodit.errors import LoditError
from lodit.eval.adherence import adherence_section
from lodit.eval.asr import describe_asr_model, normalize_text
from lodit.eval.embedders import NO_CLAP_MODEL, Embedder, EmbedderConfig, build_embedder, set_durations
from lodit.eval.embedding_cache import EmbeddingCache
from lodit.eval.frechet import fad
from lodit.eval.results import MetricResult
from lodit.files import write_json

SAMPLES_FILE = "samples.json"  # what `lodit sample` writes next to its wav files
METRICS_FORMAT = "lodit-metrics"


@dataclass
class EvaluationConfig:
    """Which models score generated audio (see the module docstring)."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)  # FAD embedder
    clap_model: str = ""  # hub name or local folder of a transformers CLAP model; "" = CLAP score unavailable
    asr_model: str = "offline:tiny.en"  # offline:tiny.en | offline:base | CTranslate2 folder | size name (large-v3)
    asr_language: str = "en"
    speaker_model: str = "resemblyzer"  # resemblyzer, or a WavLMForXVector hub name / folder
    bootstrap: int = 0  # FAD bootstrap resamples for a confidence interval (0 = none)
    seed: int = 0  # of the bootstrap resampling
    device: str = "auto"


@dataclass
class GeneratedSample:
    """One entry of ``samples.json`` with its file resolved."""

    path: Path
    prompt: str
    transcript: str
    task: str
    reference_audio: str


@dataclass
class ReferenceClip:
    path: Path
    segment: tuple[float, float | None]  # (offset, duration) seconds inside the file
    domain: str
    transcript: str
    caption: str = ""
    labels: Any = None  # the row's labels (adherence reads the demo dataset's caption attributes there)


# ============================================================================ reading the inputs


def read_samples(samples_dir: str | os.PathLike) -> tuple[dict[str, Any], list[GeneratedSample]]:
    """``samples.json`` of a ``lodit sample`` folder and its samples (files checked to exist)."""
    folder = Path(samples_dir)
    index = folder / SAMPLES_FILE
    if not index.is_file():
        raise LoditError(
            f"{index}: not found; --samples must be a folder written by `lodit sample` (wavs + {SAMPLES_FILE})"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        entries = data["samples"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise LoditError(
            f"{index}: not a `lodit sample` index (needs a 'samples' list); re-run `lodit sample`"
        ) from None
    if not entries:
        raise LoditError(f"{index}: lists no samples; generate some with `lodit sample`")
    samples = []
    for number, entry in enumerate(entries):
        path = folder / str(entry.get("file", ""))
        if not path.is_file():
            raise LoditError(f"{index}: sample {number} names {path}, which does not exist; re-run `lodit sample`")
        reference = str(entry.get("reference_audio") or "")
        samples.append(GeneratedSample(path=path, prompt=str(entry.get("prompt") or ""),
                                       transcript=str(entry.get("transcript") or ""),
                                       task=str(entry.get("task") or ""), reference_audio=reference))
    return data, samples


def read_reference(manifest: str | os.PathLike) -> list[ReferenceClip]:
    """The reference clips of a manifest (each row's segment of its file)."""
    data = read_manifest(manifest, check_audio=True)
    if len(data) == 0:
        raise LoditError(f"{manifest}: the reference manifest has no rows")
    return [ReferenceClip(path=data.audio_path(row), segment=(row.offset, row.duration), domain=row.domain or "",
                          transcript=row.transcript or "", caption=row.caption or "", labels=row.labels)
            for row in data.rows]


# ============================================================================ the evaluator


class Evaluator:
    """Scores sample folders against reference manifests; models load on first use and are kept."""

    def __init__(self, config: EvaluationConfig, *, embedding_cache: str | os.PathLike | None = None,
                 progress: bool = False):
        if config.bootstrap < 0:
            raise LoditError(f"evaluation.bootstrap must be >= 0, got {config.bootstrap}")
        self.config = config
        self.cache = EmbeddingCache(embedding_cache) if embedding_cache is not None else None
        self.progress = progress
        self._embedder: Embedder | None = None
        self._asr = None
        self._speaker = None
        self._clap = None

    # --------------------------------------------------------------------------- models

    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = build_embedder(self.config.embedder)
        return self._embedder

    def asr(self):
        if self._asr is None:
            from lodit.eval.asr import WERScorer

            self._asr = WERScorer(self.config.asr_model, language=self.config.asr_language or None)
        return self._asr

    def speaker(self):
        if self._speaker is None:
            from lodit.eval.speaker import SpeakerEmbedder

            name = self.config.speaker_model
            self._speaker = SpeakerEmbedder() if name == "resemblyzer" else SpeakerEmbedder("wavlm", name)
        return self._speaker

    def clap(self):
        """The CLAP model, or the reason it can't be used (a string)."""
        if self._clap is None:
            if not self.config.clap_model:
                self._clap = NO_CLAP_MODEL
            else:
                from lodit.eval.embedders import ClapAudioText

                try:
                    self._clap = ClapAudioText(self.config.clap_model, self.config.device)
                except LoditError as exc:
                    self._clap = str(exc)
        return self._clap

    # --------------------------------------------------------------------------- evaluation

    def evaluate(self, samples_dir: str | os.PathLike, reference_manifest: str | os.PathLike) -> dict[str, Any]:
        """All metrics of one samples folder: ``{"samples", "reference", "settings", "metrics": [...]}``."""
        index, samples = read_samples(samples_dir)
        reference = read_reference(reference_manifest)
        tts = [s for s in samples if s.transcript]
        # Models load first, outside the guard: a model that can't load is a mistake to report, not a missing number.
        self.embedder()
        if tts:
            self.asr()
            self.speaker()
        metrics = _guarded("fad", lambda: self.fad_metrics(samples, reference, str(reference_manifest)))
        metrics += _guarded("clap_score", lambda: [self.clap_metric(samples)])
        metrics += _guarded("wer", lambda: [self.wer_metric(tts)])
        metrics += _guarded("speaker_similarity", lambda: [self.similarity_metric(tts, reference)])
        metrics += speed_metrics(index, len(samples))
        result = {
            "format": METRICS_FORMAT,
            "samples": str(Path(samples_dir)),
            "reference": str(reference_manifest),
            "settings": index.get("settings", {}),
            "metrics": [m.to_dict() for m in metrics],
        }
        adherence = adherence_section([(s.path, s.prompt) for s in samples], reference)
        if adherence is not None:
            result["adherence"] = adherence
        return result

    def fad_metrics(
        self, samples: list[GeneratedSample], reference: list[ReferenceClip], name: str
    ) -> list[MetricResult]:
        """FAD over all samples, and per task when there are several."""
        embedder = self.embedder()
        gen = self._embed([s.path for s in samples])  # (N, dim)
        ref = self._embed([r.path for r in reference], [r.segment for r in reference])  # (M, dim)
        results = [self._fad("fad", gen, ref, [s.path for s in samples], reference, name, embedder)]
        tasks = [t for t in TASKS if any(s.task == t for s in samples)]
        if len(tasks) > 1:
            for task in tasks:
                gen_rows = [i for i, s in enumerate(samples) if s.task == task]
                ref_rows = [i for i, r in enumerate(reference) if r.domain and task_from_domain(r.domain) == task]
                results.append(self._fad(f"fad_{task}", gen[gen_rows], ref[ref_rows] if ref_rows else ref[:0],
                                         [samples[i].path for i in gen_rows], [reference[i] for i in ref_rows],
                                         name, embedder))
        return results

    def _embed(self, paths: Sequence[Path], segments=None):
        if self.cache is not None:
            return self.cache.embed_set(self.embedder(), paths, segments=segments, progress=self.progress)
        return self.embedder().embed_files(paths, segments=segments, progress=self.progress)

    def _fad(self, metric: str, gen, ref, gen_paths, reference: list[ReferenceClip], name: str,
             embedder: Embedder) -> MetricResult:
        if gen.shape[0] < 2 or ref.shape[0] < 2:
            return MetricResult.unavailable(
                metric, f"FAD needs at least 2 generated and 2 reference clips (got {gen.shape[0]} and {ref.shape[0]})",
                model=embedder.description, n=int(gen.shape[0]))
        reference_seconds = set_durations([r.path for r in reference], [r.segment for r in reference])
        durations = {"generated_seconds": set_durations(gen_paths), "reference_seconds": reference_seconds}
        result = fad(ref, gen, bootstrap=self.config.bootstrap, seed=self.config.seed, embedder=embedder.description,
                     reference=name, extra=durations)
        result.name = metric
        return result

    def clap_metric(self, samples: list[GeneratedSample]) -> MetricResult:
        captioned = [s for s in samples if s.prompt]
        if not captioned:
            return MetricResult.unavailable("clap_score", "no sample has a caption prompt")
        from lodit.eval.clap_score import clap_score

        clap = self.clap()
        if isinstance(clap, str):
            return MetricResult.unavailable("clap_score", clap, model=self.config.clap_model, n=len(captioned))
        return clap_score(clap, [s.prompt for s in captioned], [s.path for s in captioned])

    def wer_metric(self, tts: list[GeneratedSample]) -> MetricResult:
        model = describe_asr_model(self.config.asr_model)
        if not tts:
            return MetricResult.unavailable("wer", "no TTS samples (none has a transcript)", model=model)
        return self.asr().score([s.path for s in tts], [s.transcript for s in tts])

    def similarity_metric(self, tts: list[GeneratedSample], reference: list[ReferenceClip]) -> MetricResult:
        if not tts:
            return MetricResult.unavailable("speaker_similarity", "no TTS samples (none has a transcript)",
                                            model=self.config.speaker_model)
        by_text = {normalize_text(r.transcript): r for r in reference if r.transcript}
        pairs = []
        for sample in tts:
            if sample.reference_audio:
                pairs.append((sample.reference_audio, sample))
            elif normalize_text(sample.transcript) in by_text:
                pairs.append((by_text[normalize_text(sample.transcript)], sample))
        if not pairs:
            return MetricResult.unavailable(
                "speaker_similarity", "no TTS sample has a voice prompt or a reference clip with the same transcript",
                model=self.config.speaker_model)
        from lodit.data.audio import load_audio
        from lodit.eval.speaker import SAMPLE_RATE, speaker_similarity

        refs = [load_audio(ref.path, SAMPLE_RATE, offset=ref.segment[0], duration=ref.segment[1])[0]
                if isinstance(ref, ReferenceClip) else ref for ref, _ in pairs]
        result = speaker_similarity(refs, [s.path for _, s in pairs], embedder=self.speaker())
        result.details["unpaired"] = len(tts) - len(pairs)
        return result


def _guarded(name: str, compute) -> list[MetricResult]:
    """A metric's results, or one unavailable result with the reason when the data defeats it (a
    silent clip for the speaker model, degenerate embeddings for FAD): one bad sample folder must not
    stop a comparison, and the reason stays in the metrics."""
    try:
        return compute()
    except LoditError as exc:
        return [MetricResult.unavailable(name, f"could not be computed: {exc}")]


def speed_metrics(index: dict[str, Any], count: int) -> list[MetricResult]:
    """``rtf`` and ``nfe`` as ``lodit sample`` measured them (``model``: the sampler and device)."""
    settings = index.get("settings", {})
    samples = index.get("samples", [])
    sampler = (
        f"{settings.get('sampler', '?')} sampler, {settings.get('steps', '?')} steps, "
        f"cfg {settings.get('cfg', '?')}, batch {settings.get('batch_size', '?')} on {settings.get('device', '?')}"
    )
    seconds = float(sum(s.get("seconds", 0.0) for s in samples))
    rtf = index.get("rtf")
    nfe = samples[0].get("nfe") if samples else None
    return [
        MetricResult("rtf", math.nan if rtf is None else float(rtf), count, sampler,
                     {"wall_seconds": index.get("wall_seconds"), "audio_seconds": seconds}),
        MetricResult("nfe", math.nan if nfe is None else float(nfe), count, sampler,
                     {"model_calls": samples[0].get("model_calls") if samples else None}),
    ]


def evaluate_samples(
    samples_dir: str | os.PathLike,
    reference_manifest: str | os.PathLike,
    config: EvaluationConfig | None = None,
    *,
    embedding_cache: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate one samples folder (see :class:`Evaluator`); also write it to ``out`` when given."""
    result = Evaluator(config or EvaluationConfig(), embedding_cache=embedding_cache).evaluate(
        samples_dir, reference_manifest
    )
    if out is not None:
        write_json(out, result)
    return result


def format_metric(metric: dict[str, Any]) -> str:
    """One line of a metric: name, value (or why it is missing), n and model."""
    if metric.get("value") is None:
        reason = metric.get("details", {}).get("unavailable", "not computed")
        return f"{metric['name']}: unavailable ({reason})"
    model = f", {metric['model']}" if metric.get("model") else ""
    return f"{metric['name']}: {metric['value']:.4g} (n={metric['n']}{model})"
