"""Understanding: what discrete tokens and continuous features know about labelled audio, for the
``lodit compare`` report (UniAudio-Token with/without SAE, F3's features, the arms' raw latents
and the semantic teacher itself, side by side).

For every representation and every probing task (a labelled manifest and ``label``, a key of each
row's ``labels`` or a row field such as ``speaker``: e.g. the built-in dataset's sound ``event`` and
speech ``voice``, or ESC-50's ``category``), on every clip of the task's manifest:

* **frames**: token ids ``(T,)`` (``kind: tokens``, a UniAudio-Token folder), or frames ``(T, D)``
  of F3 features (``features``, a ``lodit train-repr`` folder), of a lodit tokenizer's latents
  (``latents``, a tokenizer folder; every arm of the experiment is added as one), or of a frozen
  semantic encoder (``teacher``, e.g. ``offline:tiny.en``);
* **linear probe**: k-fold logistic regression on each clip's mean frame (token ids: the clip's
  normalised token histogram), :func:`~lodit.eval.probes.linear_probe_kfold`;
* **clustering** (UniAudio-Token's protocol): per-clip token histograms — continuous frames are
  first quantised by a k-means codebook of ``codebook_size`` codes fitted on all clips' frames
  (:func:`~lodit.eval.probes.quantize_latents`) — clustered by k-means into as many clusters as
  classes: purity and silhouette (:func:`~lodit.eval.probes.clustering_scores`);
* for token representations whose folder has a decoder, with ``speech_clips > 0``: **reconstruction
  WER / SIM** on the speech rows of ``speech_manifest`` (tokens -> decoder -> audio; WER of the ASR
  model against the transcript, speaker similarity to the original clip), beside the WER of the
  originals themselves (what the ASR model gets right at best).

Entries sharing a ``group`` (e.g. one UniAudio-Token trained with two seeds) are reported as
their mean and per-seed values. :func:`run_understanding` writes ``metrics.json``;
:func:`understanding_table` is the report's section.

May import: everything (``lodit.eval`` is the top layer under ``cli``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lodit.data.audio import load_audio
from lodit.data.manifest import read_manifest
from lodit.errors import LoditError
from lodit.eval.probes import (
    _row_value,
    clustering_scores,
    linear_probe_kfold,
    quantize_latents,
    token_histograms,
)
from lodit.eval.tables import Table

Kind = Literal["tokens", "features", "latents", "teacher"]


@dataclass
class RepresentationSpec:
    name: str = ""
    kind: Kind = "tokens"
    model: str = ""  # the folder (tokens / features / latents) or the semantic encoder's model (teacher)
    group: str = ""  # entries of one group (e.g. seeds) are averaged in the report; "" = the name
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.model:
            raise ValueError("understanding.representations: every entry needs a name and a model")


@dataclass
class ProbeTask:
    """One probing task: a labelled manifest and the label to predict / cluster by."""

    name: str = ""
    manifest: str = ""  # e.g. ESC-50's layout, or the built-in set's sound clips
    label: str = "event"

    def __post_init__(self) -> None:
        if not self.name or not self.manifest or not self.label:
            raise ValueError("understanding.tasks: every task needs a name, a manifest and a label")


@dataclass
class UnderstandingConfig:
    """``understanding:`` in an experiment config (``lodit compare``)."""

    tasks: list[ProbeTask] = field(default_factory=list)
    representations: list[RepresentationSpec] = field(default_factory=list)
    include_arms: bool = True  # also probe the raw latents of every arm's tokenizer
    folds: int = 5
    seed: int = 0
    codebook_size: int = 64  # k-means codes for continuous frames before histogram clustering
    speech_manifest: str = ""  # rows with transcripts for reconstruction WER / SIM ("" = none)
    speech_clips: int = 8
    asr_model: str = "offline:tiny.en"
    speaker_model: str = "resemblyzer"

    def __post_init__(self) -> None:
        if not self.tasks or len({t.name for t in self.tasks}) != len(self.tasks):
            raise ValueError(
                "understanding.tasks: list at least one probing task (name, manifest, label), names unique"
            )
        if self.folds < 2 or self.codebook_size < 2 or self.speech_clips < 0:
            raise ValueError("understanding.folds and codebook_size must be >= 2, speech_clips >= 0")


# ----------------------------------------------------------------------------- per-clip frames


def _clip_audio(manifest: str | os.PathLike, sample_rate: int) -> tuple[list[torch.Tensor], list[Any]]:
    data = read_manifest(manifest)
    wavs = [
        load_audio(data.audio_path(row), sample_rate, channels="mix", offset=row.offset, duration=row.duration)
        for row in data.rows
    ]
    return wavs, data.rows


@torch.no_grad()
def representation_frames(
    spec: RepresentationSpec, manifest: str | os.PathLike, cache_root: str | os.PathLike | None = None
) -> tuple[list[torch.Tensor], int | None, str]:
    """Per clip of ``manifest``: token ids ``(T,)`` (with the vocabulary size) or frames ``(T, D)``
    (vocabulary None), and a description of the model. ``cache_root``: a feature cache for the
    frozen encoder of token models, so models sharing an encoder (seeds, ablations) run it once per clip."""
    if spec.kind == "tokens":
        from lodit.latent_tokenizer.feature_cache import FeatureCache
        from lodit.latent_tokenizer.uniaudio import TokenFrameEncoder

        model = TokenFrameEncoder(spec.model)
        data = read_manifest(manifest)
        cache = FeatureCache(cache_root, model.teacher.identity()) if cache_root else None
        ids = []
        for row in data.rows:
            path = data.audio_path(row)

            def features(path=path, row=row) -> torch.Tensor:
                wav = load_audio(path, model.sample_rate, channels="mix", offset=row.offset, duration=row.duration)
                return model.teacher(wav[None])[0]

            key = f"{path.resolve()}|{row.offset}|{row.duration}|{path.stat().st_mtime_ns}"
            clip = cache.get(key, features) if cache is not None else features()
            ids.append(model.model(clip[None].float()).ids[0])
        config = model.model.config
        sae = "SAE" if config.sae.enabled else "no SAE"
        return ids, model.model.codebook_size, f"{config.name} ({model.model.codebook_size} codes, {sae})"
    if spec.kind == "features":
        from lodit.repr.f3 import FeatureFrameEncoder

        model = FeatureFrameEncoder(spec.model)
        wavs, _ = _clip_audio(manifest, model.sample_rate)
        return [model.encode(w[None])[0] for w in wavs], None, f"F3 features ({model.model.config.width}-dim)"
    if spec.kind == "latents":
        from lodit.latent_tokenizer.tokenizer import Tokenizer

        model = Tokenizer.from_pretrained(spec.model)
        wavs, _ = _clip_audio(manifest, model.sample_rate)
        return (
            [model.encode(w[None])[0].float() for w in wavs],
            None,
            f"{model.config.name} latents ({model.latent_dim}-dim)",
        )
    from lodit.latent_tokenizer.semantic import (
        SemanticEncoderConfig,
        build_semantic_encoder,
    )

    teacher = build_semantic_encoder(SemanticEncoderConfig(model=spec.model))
    wavs, _ = _clip_audio(manifest, teacher.sample_rate)
    return [teacher(w[None])[0] for w in wavs], None, f"teacher {spec.model} ({teacher.dim}-dim)"


def understanding_scores(
    frames: list[torch.Tensor],
    vocab: int | None,
    labels: list[Any],
    *,
    folds: int = 5,
    seed: int = 0,
    codebook_size: int = 64,
    model: str = "",
) -> dict[str, Any]:
    """Probe accuracy, purity and silhouette of one representation (see the module docstring)."""
    if vocab is None:
        pooled = torch.stack([f.double().mean(0) for f in frames])
        tokens, _ = quantize_latents(frames, codebook_size, seed=seed)
        histograms = token_histograms(tokens, codebook_size)
    else:
        histograms = token_histograms(frames, vocab)
        pooled = histograms
    probe = linear_probe_kfold(pooled, labels, folds=folds, seed=seed, model=model)
    clusters = clustering_scores(histograms, labels, seed=seed, model=model)
    return {
        "probe_accuracy": probe.value,
        "probe_folds": probe.details.get("fold_accuracies"),
        "purity": clusters["purity"].value,
        "silhouette": clusters["silhouette"].value,
        "dim": int(pooled.shape[1]),
        "vocab": vocab or codebook_size,
        "n_clips": len(labels),
        "n_classes": len(set(labels)),
    }


def speech_reconstruction(
    folder: str, manifest: str, clips: int, *, asr_model: str, speaker_model: str, out_dir: Path | None = None
) -> dict[str, Any]:
    """Reconstruction WER / SIM of a UniAudio-Token folder with a decoder on the first ``clips``
    rows of ``manifest`` that have a transcript."""
    from lodit.data.audio import save_audio
    from lodit.dit.uniaudio_stages import UniAudioCodec
    from lodit.eval.asr import WERScorer
    from lodit.eval.speaker import SpeakerEmbedder, speaker_similarity

    data = read_manifest(manifest)
    rows = [row for row in data.rows if row.transcript][:clips]
    if not rows:
        raise LoditError(
            f"{manifest}: no row has a transcript; understanding.speech_manifest needs speech with transcripts"
        )
    codec = UniAudioCodec(folder, "cpu")
    originals, recons = [], []
    for i, row in enumerate(rows):
        wav = load_audio(data.audio_path(row), 16000, channels="mix", offset=row.offset, duration=row.duration)
        _, recon = codec.round_trip(wav, seed=i)
        originals.append(wav[0])
        recons.append(recon[0])
        if out_dir is not None:
            save_audio(out_dir / f"speech_{i:02d}.wav", recon, 16000)
    scorer = WERScorer(model=asr_model)
    texts = [row.transcript for row in rows]
    wer = scorer.score([r.numpy() for r in recons], texts)
    wer_original = scorer.score([o.numpy() for o in originals], texts)
    sim = speaker_similarity(originals, recons, embedder=SpeakerEmbedder(speaker_model))
    return {
        "wer": wer.value,
        "wer_original": wer_original.value,
        "speaker_similarity": sim.value,
        "n": len(rows),
        "asr_model": wer.model,
        "speaker_model": sim.model,
    }


def run_understanding(
    config: UnderstandingConfig, folder: str | os.PathLike, arm_tokenizers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Score every representation (and every arm's latents) and write ``folder/metrics.json``."""
    from lodit.files import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for task in config.tasks:
        data = read_manifest(task.manifest)
        labels[task.name] = [
            _row_value(row, task.label, task.manifest, line) for row, line in zip(data.rows, data.line_numbers)
        ]
    specs = list(config.representations)
    if config.include_arms:
        specs += [
            RepresentationSpec(name=f"arm {name}", kind="latents", model=path, description="raw latents")
            for name, path in (arm_tokenizers or {}).items()
        ]
    rows = []
    for spec in specs:
        row = {
            "name": spec.name,
            "group": spec.group or spec.name,
            "kind": spec.kind,
            "description": spec.description,
            "scores": {},
        }
        for task in config.tasks:
            frames, vocab, row["model"] = representation_frames(spec, task.manifest, folder / "encoder_features")
            row["scores"][task.name] = understanding_scores(
                frames,
                vocab,
                labels[task.name],
                folds=config.folds,
                seed=config.seed,
                codebook_size=config.codebook_size,
                model=row["model"],
            )
        if spec.kind == "tokens" and config.speech_manifest and config.speech_clips:
            from lodit.latent_tokenizer.uniaudio import DECODER_KEY, read_folder_config

            if DECODER_KEY in read_folder_config(spec.model):
                audio = folder / "speech" / spec.name
                audio.mkdir(parents=True, exist_ok=True)
                row["speech"] = speech_reconstruction(
                    spec.model,
                    config.speech_manifest,
                    config.speech_clips,
                    asr_model=config.asr_model,
                    speaker_model=config.speaker_model,
                    out_dir=audio,
                )
        rows.append(row)
    results = {
        "tasks": [
            {
                "name": t.name,
                "manifest": t.manifest,
                "label": t.label,
                "n_clips": len(labels[t.name]),
                "n_classes": len(set(labels[t.name])),
            }
            for t in config.tasks
        ],
        "folds": config.folds,
        "codebook_size": config.codebook_size,
        "representations": rows,
    }
    write_json(folder / "metrics.json", results)
    return results


# ----------------------------------------------------------------------------- the report section


def _mean_and_values(values: list[float | None], digits: int = 3) -> str:
    real = [v for v in values if v is not None and not np.isnan(v)]
    if not real:
        return "—"
    if len(real) == 1:
        return f"{real[0]:.{digits}f}"
    return f"{np.mean(real):.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in real)})"


def understanding_table(results: dict[str, Any] | None):
    """The report's "Understanding" table (a :class:`~lodit.eval.tables.Table`), or None without results."""
    if not results or not results.get("representations"):
        return None
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in results["representations"]:
        groups.setdefault(row["group"], []).append(row)
    table_rows = []
    for group, members in groups.items():
        first = members[0]
        speech = [m["speech"] for m in members if "speech" in m]
        for i, task in enumerate(results["tasks"]):
            scores = [m["scores"][task["name"]] for m in members]
            table_rows.append(
                [
                    group + (f" (×{len(members)})" if len(members) > 1 else ""),
                    task["name"],
                    first["model"],
                    _mean_and_values([s["probe_accuracy"] for s in scores]),
                    _mean_and_values([s["purity"] for s in scores]),
                    _mean_and_values([s["silhouette"] for s in scores]),
                    _mean_and_values([s["wer"] for s in speech], 2) if speech and i == 0 else "—",
                    _mean_and_values([s["speaker_similarity"] for s in speech], 2) if speech and i == 0 else "—",
                ]
            )
    tasks = "; ".join(
        f"{t['name']}: {t['n_clips']} clips, {t['n_classes']} classes of {t['label']!r} "
        f"({Path(t['manifest']).parent.name}/{Path(t['manifest']).name})"
        for t in results["tasks"]
    )
    note = (
        f"Tasks: {tasks}. Probe: {results['folds']}-fold logistic regression on each clip's mean "
        "frame (tokens: its token histogram). Purity / silhouette: k-means (k = classes) of per-clip token "
        f"histograms; continuous frames are first coded by a {results['codebook_size']}-code k-means codebook. "
        "Several entries of one group (seeds) show their mean, then each value. Reconstruction WER / SIM: "
        "tokens -> decoder -> audio on speech clips (ASR and speaker model in metrics.json, with the WER of the "
        "original clips)."
    )
    return Table(
        "Understanding: probes and token-histogram clustering",
        ["representation", "task", "model", "probe accuracy", "purity", "silhouette", "recon WER", "recon SIM"],
        table_rows,
        note,
    )


@torch.no_grad()
def uniaudio_statistics(folder: str | os.PathLike, audio: list[str | os.PathLike]) -> list[Any]:
    """``lodit evaluate --uniaudio FOLDER``: the UniAudio-Token's mean SAE gate (``sae_gate``, 0 with
    the SAE off), codebook usage (fraction of codes used by any clip) and perplexity (``exp`` of the
    entropy of the pooled code histogram) over ``audio`` files, as metric results."""
    from lodit.eval.results import MetricResult
    from lodit.latent_tokenizer.sae import mean_gate
    from lodit.latent_tokenizer.uniaudio import TokenFrameEncoder

    if not audio:
        raise LoditError("no audio to run the UniAudio-Token over")
    model = TokenFrameEncoder(folder)
    tokenizer = model.model
    dim = tokenizer.config.teacher_dim
    gates, counts = [], torch.zeros(tokenizer.codebook_size)
    for path in audio:
        wav = load_audio(path, model.sample_rate, channels="mix")
        features = model.teacher(wav[None])  # (1, T, 2D)
        _, gamma = tokenizer.sae(features[..., :dim], features[..., dim:])
        gates.append(float(mean_gate(gamma)))
        counts += torch.bincount(tokenizer(features).ids.flatten(), minlength=tokenizer.codebook_size).float()
    probs = counts / counts.sum()
    perplexity = float(torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum()))
    name = f"UniAudio-Token {Path(folder).name}"
    return [
        MetricResult("sae_gate", float(np.mean(gates)), len(gates), name, {"per_clip": gates}),
        MetricResult(
            "codebook_usage",
            float((counts > 0).float().mean()),
            len(gates),
            name,
            {"codebook_size": tokenizer.codebook_size},
        ),
        MetricResult("codebook_perplexity", perplexity, len(gates), name, {"codebook_size": tokenizer.codebook_size}),
    ]


def model_fingerprint(model: str) -> str:
    """What changes when a representation's model does: its ``config.json`` and weight files (size,
    modification time); a model name (a teacher) stands for itself."""
    import hashlib

    folder = Path(model)
    if not folder.is_dir():
        return model
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.name == "config.json" or path.suffix == ".safetensors"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]
