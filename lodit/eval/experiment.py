"""The latent-dimension comparison: its config (:class:`ExperimentConfig`) and the runner that fills an output folder.

An experiment has **arms** (each a tokenizer: a training config with overrides, or an already
trained tokenizer folder) that share everything else: one DiT config, one data split, one DiT
step budget with evaluation checkpoints, one sampler, one set of evaluation prompts and models,
and one or more training seeds. :class:`ExperimentRunner` runs, per arm,

1. ``data``: the train / evaluation manifests (the given ones, or a seeded per-domain split);
2. ``sembo`` (arms that name a SemBo config: LoSATok) and ``tokenizer``: SemBo pre-training, then
   tokenizer training with that SemBo frozen inside (skipped for an arm that names a
   ``checkpoint``); arms whose encoder has a semantic teacher share one teacher-feature cache;
3. ``encode``: the training set into a latent cache (a teacher arm reads its teacher's features
   from that shared cache instead of running the teacher again);
4. ``reconstruction``: round trips of evaluation clips through the tokenizer, with
   :func:`~lodit.eval.reconstruction.reconstruction_metrics`;
5. ``latent_stats``: width usage of the training latents (effective rank, top-k variance);
6. per seed, ``dit``: DiT training, stopped at every evaluation step (``train_dit(stop_at=k)``
   writes a checkpoint there) for ``sample``: the evaluation prompts generated from that checkpoint
   (EMA weights) by ``lodit sample``, each with the task of its reference clip's domain (music
   prompts as TTM, ...), and ``score``: those samples scored by
   :class:`~lodit.eval.evaluate.Evaluator` (with text adherence when the evaluation clips carry the
   demo dataset's labels); training then continues. Samples and scores are
   separate stages, so changing only the metric models re-scores the kept samples. TTS prompts
   are generated from the transcript alone in ``sample`` and again, in ``sample_with_reference``,
   with another clip of the same speaker and its transcript as the reference voice; ``score``
   reports the two apart (:data:`TTS_VARIANTS`: ``wer`` / ``speaker_similarity`` without,
   ``wer_with_reference`` / ``speaker_similarity_with_reference`` with a reference). With
   ``evaluation.adherence_manifest``, ``sample_adherence`` also generates every caption of that
   labelled manifest and ``score`` judges them for text adherence alone (``adherence_probes``);

and finally the report (:mod:`lodit.eval.report`).

Resume: each stage folder holds ``stage.json`` with a hash of everything its output depends on
(configs, input manifests by content, upstream stages) and its status. A stage marked ``done``
with the same hash is reused; a ``running`` one with the same hash continues (training resumes
from its newest checkpoint, other stages start over); one whose hash differs was made with other
settings and is redone from scratch, with a message. Every stage writes its outputs atomically and
appends ``ran`` / ``reused`` to ``stages.jsonl`` in the output folder.

The config is :mod:`lodit.eval.experiment_config`, the stage bookkeeping :mod:`lodit.eval.stages`,
the folder layout :mod:`lodit.eval.layout`.

The output layout is :class:`~lodit.eval.layout.ExperimentLayout`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lodit.config import (
    load_config,
    save_config,
    to_dict,
)
from lodit.data.audio import audio_info, load_audio, save_audio
from lodit.data.manifest import ManifestRow, portable_audio_path, read_manifest, write_manifest
from lodit.errors import LoditError
from lodit.eval.adherence import adherence_section, prompt_attributes
from lodit.eval.evaluate import Evaluator
from lodit.eval.experiment_config import ARM_PATH_KEYS, ArmConfig, ExperimentConfig, SamplingSettings
from lodit.eval.layout import (
    LATENT_STATS_FILE,
    METRICS_FILE,
    REFERENCES_FILE,
    SAMPLES_INDEX,
    TTS_VARIANTS,
    ExperimentLayout,
)
from lodit.eval.results import MetricResult
from lodit.eval.stages import StageBook, file_digest, spec_hash
from lodit.files import read_json, write_json, write_jsonl

log = logging.getLogger(__name__)

VOICES_FILE = "voices.json"  # the reference voices of the TTS samples made with one


# ============================================================================ the runner


@dataclass
class ArmState:
    """What the stages of one arm produced."""

    tokenizer_dir: Path
    tokenizer_spec: Any
    teacher_cache: Path | None = None  # the teacher features its training cached (a LoSATok arm trained here)
    cache_dir: Path | None = None
    cache_spec: Any = None


class ExperimentRunner:
    """Runs the stages of an experiment into ``out_dir`` (see the module docstring)."""

    def __init__(self, config: ExperimentConfig, out_dir: str | os.PathLike):
        self.config = config
        self.out = Path(out_dir)
        self.layout = ExperimentLayout(self.out)
        self.book = StageBook(self.out)
        self.evaluator = Evaluator(config.evaluation.metric_config(), embedding_cache=self.layout.embeddings)
        self._text_encoder = None
        self._check_inputs()

    # --------------------------------------------------------------------------- running

    def run(self) -> Path:
        """Every missing stage, then the report; returns the report folder."""
        from lodit.eval.report import collect_results, write_report

        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.layout.config_copy)
        data_spec = self.prepare_data()
        states = {}
        for arm in self.config.arms:
            state = states[arm.name] = self.tokenizer(arm, data_spec)
            self.encode(arm, state, data_spec)
            self.reconstruction(arm, state, data_spec)
            self.latent_stats(arm, state)
            for seed in self.config.seeds:
                self.dit(arm, state, seed, data_spec)
        if self.config.understanding is not None:
            self.understanding(states)
        results = collect_results(self.out, self.config)
        report = self._stage("report", self.layout.report_dir, {"results": spec_hash(results)},
                             lambda folder: write_report(results, folder))
        log.info(f"experiment {self.config.name}: done in {time.monotonic() - started:.0f} s; report in {report}")
        return report

    def _stage(self, name: str, folder: Path, spec: Any, work: Callable[[Path], Any]) -> Path:
        """Run ``work(folder)`` unless ``folder`` already holds this spec's output."""
        if self.book.is_done(folder, spec):
            self.book.log(name, "reused")
            return folder
        self.book.start(folder, spec)
        log.info(f"{name}: running")
        started = time.monotonic()
        work(folder)
        self.book.finish(name, folder, spec, time.monotonic() - started)
        return folder

    def _check_inputs(self) -> None:
        cfg = self.config
        if not cfg.dit.config or not Path(cfg.dit.config).is_file():
            raise LoditError(f"dit.config: DiT config {cfg.dit.config or '(not set)'} not found; "
                             "set dit.config to a YAML such as configs/dit/tta.yaml")
        if not cfg.data.train_manifest or not Path(cfg.data.train_manifest).is_file():
            raise LoditError(f"data.train_manifest: {cfg.data.train_manifest or '(not set)'} not found; "
                             "set it to the training manifest (data.train_manifest=PATH)")
        if cfg.data.eval_manifest and not Path(cfg.data.eval_manifest).is_file():
            raise LoditError(f"data.eval_manifest: {cfg.data.eval_manifest} not found; "
                             "fix the path or leave it empty to split the training set")
        if cfg.evaluation.adherence_manifest:
            _check_adherence_manifest(Path(cfg.evaluation.adherence_manifest))
        for arm in cfg.arms:
            for key in ARM_PATH_KEYS:
                source = getattr(arm, key)
                if source and not Path(source).exists():
                    raise LoditError(f"arm {arm.name}: {key} {source} not found; fix arms[{arm.name}].{key}")

    # --------------------------------------------------------------------------- data

    def prepare_data(self) -> dict[str, str]:
        """The train / evaluation manifests under ``OUT/data``; returns their content hashes."""
        cfg = self.config.data
        spec = {"train": file_digest(cfg.train_manifest),
                "eval": file_digest(cfg.eval_manifest) if cfg.eval_manifest else None,
                "eval_fraction": None if cfg.eval_manifest else cfg.eval_fraction,
                "split_seed": None if cfg.eval_manifest else cfg.split_seed}
        self._stage("data", self.layout.data_dir, spec, self._write_split)
        return {"train": file_digest(self.layout.train_manifest), "eval": file_digest(self.layout.eval_manifest)}

    def _write_split(self, folder: Path) -> None:
        cfg = self.config.data
        train = _absolute_rows(cfg.train_manifest)
        if cfg.eval_manifest:
            held_out = _absolute_rows(cfg.eval_manifest)
        else:
            train, held_out = split_rows(train, cfg.eval_fraction, cfg.split_seed)
        for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
            if not rows:
                raise LoditError(f"the {name[:-6]} set would be empty; "
                                 "add clips to data.train_manifest or give data.eval_manifest")
            write_manifest(folder / name, [replace(row, audio=portable_audio_path(row.audio, folder)) for row in rows])
        log.info(f"data: {len(train)} training clips, {len(held_out)} evaluation clips")

    # --------------------------------------------------------------------------- tokenizer

    def tokenizer_config(self, arm: ArmConfig, sembo_dir: Path | None = None):
        from lodit.latent_tokenizer.train import TokenizerTrainConfig

        overrides = list(arm.overrides) + [f"data.manifest={self.layout.train_manifest.resolve()}"]
        if self.config.tokenizer_steps:
            overrides.append(f"training.max_steps={self.config.tokenizer_steps}")
        if sembo_dir is not None:
            overrides.append(f"tokenizer.encoder.semantic.sembo={sembo_dir.resolve()}")
        config = load_config(TokenizerTrainConfig, arm.tokenizer, overrides)
        if config.data.teacher_cache:  # one teacher pass per clip for every arm and the SemBo
            config = replace(config, data=replace(config.data, teacher_cache=str(self.layout.teacher_cache.resolve())))
        return config

    def sembo(self, arm: ArmConfig, data_spec: dict[str, str]) -> tuple[Path, Any]:
        """Train the arm's SemBo (shared by every arm with the same SemBo config); its final/ and spec."""
        from lodit.latent_tokenizer.sembo_train import SemBoTrainConfig, train_sembo

        overrides = list(arm.sembo_overrides) + [f"data.manifest={self.layout.train_manifest.resolve()}",
                                                 f"data.feature_cache={self.layout.teacher_cache.resolve()}"]
        config = load_config(SemBoTrainConfig, arm.sembo, overrides)
        described = to_dict(config)
        described["data"]["manifest"] = data_spec["train"]
        described["data"]["feature_cache"] = ""  # where the features are cached does not change them
        spec = {"config": described}
        run_dir = self.layout.sembo_dir(spec_hash(spec))

        def work(folder: Path) -> None:
            log.info(f"[{arm.name}] training SemBo for {config.training.max_steps} steps")
            train_sembo(config, folder)

        self._stage(f"sembo/{run_dir.name}", run_dir, spec, work)
        return run_dir / "final", spec

    def tokenizer(self, arm: ArmConfig, data_spec: dict[str, str]) -> ArmState:
        """Train the arm's tokenizer (or take its checkpoint); returns where it is."""
        if arm.checkpoint:
            folder = _tokenizer_folder(Path(arm.checkpoint))
            return ArmState(folder, {"checkpoint": _tokenizer_fingerprint(folder)})
        from lodit.latent_tokenizer.train import train_tokenizer

        sembo_dir, sembo_spec = self.sembo(arm, data_spec) if arm.sembo else (None, None)
        config = self.tokenizer_config(arm, sembo_dir)
        described = to_dict(config)
        described["data"]["manifest"] = data_spec["train"]
        described["data"]["teacher_cache"] = bool(described["data"]["teacher_cache"])
        if sembo_spec is not None:  # the SemBo by what made it, not by its folder
            described["tokenizer"]["encoder"]["semantic"]["sembo"] = spec_hash(sembo_spec)
        spec = {"config": described}
        run_dir = self.layout.tokenizer_run(arm.name)

        def work(folder: Path) -> None:
            log.info(f"[{arm.name}] training the tokenizer for {config.training.max_steps} steps")
            train_tokenizer(config, folder)

        self._stage(f"tokenizer/{arm.name}", run_dir, spec, work)
        teacher_cache = Path(config.data.teacher_cache) if config.data.teacher_cache else None
        return ArmState(run_dir / "final", spec, teacher_cache)

    def encode(self, arm: ArmConfig, state: ArmState, data_spec: dict[str, str]) -> None:
        from lodit.latent_tokenizer.encode import encode_manifest

        spec = {"tokenizer": spec_hash(state.tokenizer_spec), "manifest": data_spec["train"]}
        folder = self.layout.cache_dir(arm.name)

        def work(stage_dir: Path) -> None:
            log.info(f"[{arm.name}] encoding the training set")
            summary = encode_manifest(state.tokenizer_dir, self.layout.train_manifest, stage_dir / "latents",
                                      overwrite=True, resume=True, progress=False, teacher_cache=state.teacher_cache)
            log.info(f"[{arm.name}] {summary.line()}")

        self._stage(f"encode/{arm.name}", folder, spec, work)
        state.cache_dir, state.cache_spec = folder / "latents", spec

    def reconstruction(self, arm: ArmConfig, state: ArmState, data_spec: dict[str, str]) -> None:
        count = self.config.evaluation.reconstruction_clips
        spec = {"tokenizer": spec_hash(state.tokenizer_spec), "manifest": data_spec["eval"], "clips": count}

        def work(folder: Path) -> None:
            write_json(
                folder / METRICS_FILE, reconstruction_report(state.tokenizer_dir, self.layout.eval_manifest, count)
            )

        self._stage(f"reconstruction/{arm.name}", self.layout.reconstruction_dir(arm.name), spec, work)

    def latent_stats(self, arm: ArmConfig, state: ArmState) -> None:
        from lodit.eval.latent_stats import latent_cache_statistics, latent_stat_results

        spec = {"cache": spec_hash(state.cache_spec)}

        def work(folder: Path) -> None:
            stats = latent_cache_statistics(str(state.cache_dir))
            eigenvalues = stats["eigenvalues"].numpy()
            cumulative = (np.cumsum(eigenvalues) / max(float(eigenvalues.sum()), 1e-30)).tolist()
            write_json(folder / LATENT_STATS_FILE, {
                "metrics": [m.to_dict() for m in latent_stat_results(stats, model=f"training latents of {arm.name}")],
                "dim": int(stats["dim"]), "n_frames": int(stats["n_frames"]),
                "cumulative_variance": cumulative, "channel_std": stats["std"].tolist(),
            })

        self._stage(f"latent_stats/{arm.name}", self.layout.latent_stats_dir(arm.name), spec, work)

    def understanding(self, states: dict[str, ArmState]) -> None:
        """Probes and clustering of the configured representations and the arms' latents."""
        from lodit.eval.understanding import model_fingerprint, run_understanding

        cfg = self.config.understanding
        arms = {name: str(state.tokenizer_dir) for name, state in states.items()}
        spec = {"config": to_dict(cfg), "manifests": [file_digest(task.manifest) for task in cfg.tasks],
                "arms": {name: spec_hash(state.tokenizer_spec) for name, state in states.items()},
                "models": {r.name: model_fingerprint(r.model) for r in cfg.representations}}
        self._stage("understanding", self.layout.understanding_dir, spec,
                    lambda folder: run_understanding(cfg, folder, arms if cfg.include_arms else None))

    # --------------------------------------------------------------------------- DiT, sampling, evaluation

    def dit_config(self, state: ArmState, seed: int):
        from lodit.dit.train_config import DiTTrainConfig

        overrides = list(self.config.dit.overrides) + [
            f"data.cache={state.cache_dir.resolve()}",
            f"training.max_steps={self.config.dit_steps}",
            f"training.seed={seed}",
        ]
        return load_config(DiTTrainConfig, self.config.dit.config, overrides)

    def dit(self, arm: ArmConfig, state: ArmState, seed: int, data_spec: dict[str, str]) -> None:
        """Train one DiT, stopping at each evaluation step to sample (and then score) its checkpoint."""
        config = self.dit_config(state, seed)
        described = to_dict(config)
        described["data"]["cache"] = spec_hash(state.cache_spec)
        spec = {"config": described}
        run_dir = self.layout.dit_run(arm.name, seed)
        name = f"dit/{arm.name}/seed-{seed}"
        finished = self.book.is_done(run_dir, spec)
        if finished:
            self.book.log(name, "reused")
        else:
            self.book.start(run_dir, spec)
        started = time.monotonic()
        for step in self.config.eval_steps:
            where = f"{arm.name}/seed-{seed}/step-{step}"
            sample_spec = {"dit": spec_hash(spec), "step": step, "sampling": to_dict(self.config.sampling),
                           "num_prompts": self.config.evaluation.num_prompts,
                           "seconds": self.config.evaluation.seconds, "prompts_from": data_spec["eval"]}
            samples_dir = self.layout.samples_dir(arm.name, seed, step)
            at_step = partial(self._checkpoint_at, config, run_dir, step)
            self._sample_stage(f"sample/{where}", samples_dir, sample_spec, partial(self.sample, state), at_step)
            score_spec = {"samples": spec_hash(sample_spec), "reference": data_spec["eval"],
                          "metrics": to_dict(self.config.evaluation.metric_config())}
            voice_dir = None
            if _has_tts(samples_dir):  # the same TTS prompts again, each with a reference voice
                voice_dir = self.layout.voice_samples_dir(arm.name, seed, step)
                voice_spec = {**sample_spec, "variant": "tts with a reference voice", "voices_from": data_spec["train"]}
                self._sample_stage(f"sample_with_reference/{where}", voice_dir, voice_spec,
                                   partial(self.sample_with_reference, state), at_step)
                score_spec["with_reference"] = spec_hash(voice_spec)
            probe_dir = None
            if self.config.evaluation.adherence_manifest:
                probe_dir = self.layout.adherence_samples_dir(arm.name, seed, step)
                probe_spec = {**sample_spec, "num_prompts": None,
                              "prompts_from": file_digest(self.config.evaluation.adherence_manifest)}
                self._sample_stage(f"sample_adherence/{where}", probe_dir, probe_spec,
                                   partial(self.sample_adherence, state), at_step)
                score_spec["adherence_probes"] = spec_hash(probe_spec)
            self._stage(f"score/{where}", self.layout.scores_dir(arm.name, seed, step), score_spec,
                        partial(self.score, arm, samples_dir, voice_dir=voice_dir, probe_dir=probe_dir))
        if not finished:  # every evaluation step, the last being dit_steps, has been reached
            self.book.finish(name, run_dir, spec, time.monotonic() - started)

    def _sample_stage(self, name: str, folder: Path, spec: Any, sampler: Callable[[Path, Path], None],
                      checkpoint: Callable[[], Path]) -> None:
        """A sampling stage: reused when done, else ``sampler(checkpoint, folder)`` on the DiT
        checkpoint of its step (trained up to it only then)."""
        if self.book.is_done(folder, spec):
            self.book.log(name, "reused")
            return
        at_step = checkpoint()
        self._stage(name, folder, spec, partial(sampler, at_step))

    def _checkpoint_at(self, config, run_dir: Path, step: int) -> Path:
        """The DiT checkpoint at ``step``, training up to it (from the newest checkpoint) if needed."""
        from lodit.dit.train import train_dit
        from lodit.training.checkpoint import checkpoint_path, checkpoint_step, latest_checkpoint

        target = checkpoint_path(run_dir, step)
        if target.is_dir():
            return target
        latest = latest_checkpoint(run_dir)
        if latest is not None and (checkpoint_step(latest) or 0) > step:
            raise LoditError(
                f"{run_dir}: trained past step {step} and its checkpoint there is gone (pruned), so step {step} "
                "can't be evaluated; delete that DiT run folder to retrain it, or drop the step from eval_steps"
            )
        log.info(f"training the DiT in {run_dir} to step {step} of {config.training.max_steps}")
        train_dit(config, run_dir, text_encoder=self._shared_text_encoder(config), stop_at=step)
        if not target.is_dir():
            raise LoditError(f"{run_dir}: training stopped without a checkpoint at step {step}")
        return target

    def _shared_text_encoder(self, config):
        """The caption encoder, loaded once for every arm and seed (they all share the DiT config)."""
        from lodit.conditioning.text_encoders import build_text_encoder

        if self._text_encoder is None:
            self._text_encoder = build_text_encoder(config.text_encoder)
        return self._text_encoder

    def sample(self, state: ArmState, checkpoint: Path, folder: Path) -> None:
        """The evaluation prompts (for the tasks the DiT was trained on) through ``lodit sample``."""
        self._sample_captions(self.layout.eval_manifest, self.config.evaluation.num_prompts, state, checkpoint, folder)

    def sample_adherence(self, state: ArmState, checkpoint: Path, folder: Path) -> None:
        """Every caption of ``evaluation.adherence_manifest`` (for the DiT's tasks) through ``lodit sample``."""
        manifest = Path(self.config.evaluation.adherence_manifest)
        self._sample_captions(manifest, len(read_manifest(manifest)), state, checkpoint, folder)

    def _sample_captions(self, manifest: Path, count: int, state: ArmState, checkpoint: Path, folder: Path) -> None:
        """The first ``count`` clips of ``manifest`` as prompts (:func:`evaluation_prompts`) sampled into ``folder``."""
        from lodit.dit.generator import read_generator_config

        tasks = read_generator_config(checkpoint).tasks
        requests, references = evaluation_prompts(manifest, tasks, count, self.config.evaluation.seconds)
        prompts_file = folder / "prompts.jsonl"
        write_jsonl(prompts_file, _without_none(requests))
        write_json(folder / REFERENCES_FILE, references)
        run_sampler(checkpoint, prompts_file, folder, self.config.sampling, state.tokenizer_dir)

    def sample_with_reference(self, state: ArmState, checkpoint: Path, folder: Path) -> None:
        """The evaluation's TTS prompts, each with another clip of its speaker and that clip's
        transcript as the reference voice, through ``lodit sample``; ``voices.json`` lists the
        voices used and the prompts left out (no other clip of their speaker)."""
        from lodit.dit.generator import read_generator_config

        tasks = read_generator_config(checkpoint).tasks
        requests, references, skipped = reference_voice_prompts(
            self.layout.eval_manifest, self.layout.train_manifest, tasks, self.config.evaluation.num_prompts,
            folder / "voices")
        write_json(folder / VOICES_FILE, {"requests": len(requests), "references": references, "skipped": skipped})
        if requests:
            prompts_file = folder / "prompts.jsonl"
            write_jsonl(prompts_file, _without_none(requests))
            run_sampler(checkpoint, prompts_file, folder, self.config.sampling, state.tokenizer_dir)

    def score(self, arm: ArmConfig, samples_dir: Path, folder: Path, voice_dir: Path | None = None,
              probe_dir: Path | None = None) -> None:
        metrics = self.evaluator.evaluate(samples_dir, self.layout.eval_manifest)
        if probe_dir is not None:
            metrics["adherence_probes"] = probe_adherence(probe_dir, Path(self.config.evaluation.adherence_manifest))
        if voice_dir is not None:
            plain = TTS_VARIANTS["without_reference"]
            for metric in metrics["metrics"]:
                if metric["name"] in (plain["wer"], plain["speaker_similarity"]):
                    metric["details"]["tts_prompt"] = "without_reference"
            metrics["metrics"] += [m.to_dict() for m in self.with_reference_metrics(voice_dir)]
        write_json(folder / METRICS_FILE, metrics)
        headline = ", ".join(_short(m) for m in metrics["metrics"] if m["name"] in ("fad", "clap_score", "wer"))
        log.info(f"[{arm.name}] {samples_dir.parent.name}: {headline}")

    def with_reference_metrics(self, voice_dir: Path) -> list[MetricResult]:
        """WER and speaker similarity of the samples made with a reference voice (SIM against that voice)."""
        from lodit.eval.evaluate import read_samples

        names = TTS_VARIANTS["with_reference"]
        voices = read_json(voice_dir / VOICES_FILE)
        skipped = len(voices["skipped"])
        if not voices["requests"]:
            reason = "no TTS prompt has another clip of its speaker (manifest 'speaker') to use as the reference voice"
            return [MetricResult.unavailable(names[key], reason, tts_prompt="with_reference", skipped=skipped)
                    for key in ("wer", "speaker_similarity")]
        _, samples = read_samples(voice_dir)
        results = []
        for key, compute in (("wer", lambda: self.evaluator.wer_metric(samples)),
                             ("speaker_similarity", lambda: self.evaluator.similarity_metric(samples, []))):
            try:
                result = compute()
            except LoditError as exc:  # as in `lodit evaluate`: one bad sample set must not stop the comparison
                result = MetricResult.unavailable(key, f"could not be computed: {exc}")
            result.name = names[key]
            result.details.update(tts_prompt="with_reference", skipped=skipped)
            results.append(result)
        return results


# ============================================================================ building blocks


def _short(metric: dict[str, Any]) -> str:
    value = metric.get("value")
    return f"{metric['name']} {'n/a' if value is None else f'{value:.4g}'}"


def _absolute_rows(manifest: str | os.PathLike) -> list[ManifestRow]:
    """A manifest's rows with their audio paths made absolute."""
    data = read_manifest(manifest)
    return [replace(row, audio=str(data.audio_path(row).resolve())) for row in data.rows]


def split_rows(rows: list[ManifestRow], fraction: float, seed: int) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Hold out ``fraction`` of each domain's clips (seeded; at least one of a domain with two or
    more clips); the order of the manifest is kept within each part."""
    rng = np.random.default_rng(seed)
    by_domain: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_domain.setdefault(row.domain or "", []).append(i)
    held: set[int] = set()
    for domain in sorted(by_domain):
        indices = by_domain[domain]
        if len(indices) < 2:
            continue
        count = min(len(indices) - 1, max(1, round(fraction * len(indices))))
        held.update(int(i) for i in rng.permutation(indices)[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def evaluation_prompts(manifest: Path, tasks: list[str], count: int,
                       seconds: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first ``count`` evaluation clips whose task the DiT was trained on, taken round-robin over
    tasks, as ``lodit sample`` requests (each with its clip's task, so a multi-task DiT generates
    music prompts as TTM), with the reference clip of each."""
    data = read_manifest(manifest)
    chosen = _chosen_rows(data.rows, tasks, count)
    if not chosen:
        raise LoditError(f"{manifest}: no evaluation clip for the DiT's tasks ({', '.join(tasks)}); check the domains")
    requests, references = [], []
    for task, row in chosen:
        path = data.audio_path(row)
        speech = task == "tts"
        # Speech gets no length: the generator takes it from the transcript and the speaking rate.
        length = None if speech else (seconds or row.duration or _file_seconds(path, row.offset))
        requests.append({"prompt": row.caption or "", "transcript": row.transcript if speech else None,
                         "seconds": length, "task": task})
        references.append(
            {
                "audio": str(path.resolve()),
                "offset": row.offset,
                "duration": row.duration,
                "caption": row.caption or "",
                "transcript": row.transcript or "",
                "domain": row.domain or "",
            }
        )
    return requests, references


def _check_adherence_manifest(manifest: Path) -> None:
    """``evaluation.adherence_manifest`` must exist and hold captions with labels to judge."""
    if not manifest.is_file():
        raise LoditError(f"evaluation.adherence_manifest: {manifest} not found; fix the path or leave it empty")
    if not any(row.caption and prompt_attributes(row.labels) for row in read_manifest(manifest).rows):
        raise LoditError(f"evaluation.adherence_manifest: {manifest} has no captioned row with caption labels to "
                         "judge; make one with `lodit make-dataset` (e.g. --counts beeps=24)")


def probe_adherence(samples_dir: Path, manifest: Path) -> dict[str, Any]:
    """Text adherence of the samples in ``samples_dir`` to the labelled captions of ``manifest``."""
    from lodit.eval.evaluate import read_reference, read_samples

    _, samples = read_samples(samples_dir)
    section = adherence_section([(s.path, s.prompt) for s in samples], read_reference(manifest))
    if section is None:  # checked when the experiment started; the manifest changed since
        raise LoditError(f"evaluation.adherence_manifest: {manifest} no longer has labelled captions")
    return section


def _chosen_rows(rows: list[ManifestRow], tasks: list[str], count: int) -> list[tuple[str, ManifestRow]]:
    """The first ``count`` rows whose task is in ``tasks``, round-robin over tasks, with their task
    (speech rows need a transcript)."""
    from lodit.conditioning.tasks import task_from_domain

    default_task = next((t for t in tasks if t != "tts"), tasks[0])
    queues: dict[str, list[ManifestRow]] = {task: [] for task in tasks}
    for row in rows:
        task = task_from_domain(row.domain) if row.domain else default_task
        if task == "tts" and not row.transcript:
            continue
        if task in queues:
            queues[task].append(row)
    chosen: list[tuple[str, ManifestRow]] = []
    while len(chosen) < count and any(queues.values()):
        for task in tasks:
            if queues[task] and len(chosen) < count:
                chosen.append((task, queues[task].pop(0)))
    return chosen


def reference_voice_prompts(
    eval_manifest: Path, train_manifest: Path, tasks: list[str], count: int, voices_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The TTS prompts of :func:`evaluation_prompts` again, each with a reference voice.

    The voice of a prompt is another clip of its speaker (manifest ``speaker``) that says another
    sentence: the first in the evaluation set, else the first in the training set. Its segment is
    written to ``voices_dir`` (the reference must be exactly what its transcript says). Returns the
    ``lodit sample`` requests, per request its target clip and voice clip, and the prompts left out
    for want of such a clip.
    """
    from lodit.eval.asr import normalize_text

    data, train = read_manifest(eval_manifest), read_manifest(train_manifest)
    candidates = [(data, row) for row in data.rows] + [(train, row) for row in train.rows]
    requests, references, skipped = [], [], []
    for task, row in _chosen_rows(data.rows, tasks, count):
        if task != "tts":
            continue
        target = data.audio_path(row).resolve()
        voice = next(((source, other) for source, other in candidates
                      if row.speaker and other.speaker == row.speaker and other.domain == row.domain
                      and other.transcript and normalize_text(other.transcript) != normalize_text(row.transcript)
                      and (source.audio_path(other).resolve(), other.offset) != (target, row.offset)), None)
        if voice is None:
            skipped.append({"audio": str(target), "transcript": row.transcript, "speaker": row.speaker or ""})
            continue
        source, other = voice
        path = source.audio_path(other)
        rate = audio_info(path)[0]
        voice_file = voices_dir / f"{len(requests):04d}.wav"
        voices_dir.mkdir(parents=True, exist_ok=True)
        save_audio(voice_file, load_audio(path, offset=other.offset, duration=other.duration), rate)
        requests.append({"prompt": row.caption or "", "transcript": row.transcript, "task": "tts",
                         "reference_audio": str(voice_file.resolve()), "reference_transcript": other.transcript})
        references.append({"audio": str(target), "offset": row.offset, "duration": row.duration,
                           "transcript": row.transcript, "speaker": row.speaker,
                           "voice": {"audio": str(path.resolve()), "offset": other.offset, "duration": other.duration,
                                     "transcript": other.transcript,
                                     "set": "evaluation" if source is data else "training"}})
    return requests, references, skipped


def _has_tts(samples_dir: Path) -> bool:
    """Whether a ``lodit sample`` folder holds TTS samples."""
    index = read_json(samples_dir / SAMPLES_INDEX)
    return any(entry.get("task") == "tts" for entry in index["samples"])


def _file_seconds(path: Path, offset: float) -> float:
    rate, frames, _ = audio_info(path)
    return max(frames / rate - offset, 1.0 / rate)


def _without_none(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _tokenizer_folder(path: Path) -> Path:
    """A tokenizer folder from a folder or a run folder (its ``final/``)."""
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    raise LoditError(
        f"{path}: not a tokenizer folder (no config.json, nor final/config.json); pass a trained tokenizer"
    )


def _tokenizer_fingerprint(folder: Path) -> dict[str, Any]:
    """Identity of a given tokenizer folder: its config hash and weight-file sizes."""
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    config = read_json(folder / "config.json")
    tokenizer_config = config.get("tokenizer", config) if isinstance(config, dict) else config
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}
    identity = Tokenizer.from_config(tokenizer_config, source=str(folder / "config.json"), saved=True).identity()
    return {"config_hash": identity["config_hash"], "files": sizes}


def run_sampler(checkpoint: Path, prompts_file: Path, out: Path, sampling: SamplingSettings, tokenizer: Path) -> None:
    """The DiT at ``checkpoint`` on a prompts file: wavs and ``samples.json`` into ``out``."""
    from lodit.dit.prompts import sample_prompts_file

    sample_prompts_file(checkpoint, prompts_file, out, sampling=sampling, seed=sampling.seed,
                        batch_size=sampling.batch_size, use_ema=sampling.use_ema, tokenizer=tokenizer)


def spread_over_domains(rows: list[ManifestRow], count: int) -> list[ManifestRow]:
    """``count`` rows (0 = all) taken in turn from each domain, in manifest order within a domain,
    so a manifest sorted by domain still gives speech clips to PESQ and STOI."""
    if not count or count >= len(rows):
        return list(rows)
    by_domain: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_domain.setdefault(row.domain or "", []).append(row)
    queues = list(by_domain.values())
    chosen: list[ManifestRow] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def reconstruction_report(tokenizer_dir: Path, manifest: Path, count: int) -> dict[str, Any]:
    """Reconstruction metrics of ``count`` clips of ``manifest`` spread over its domains (0 = all;
    PESQ and STOI on the speech ones) and the tokenizer's description."""
    from lodit.devices import choose_device
    from lodit.eval.reconstruction import reconstruction_metrics
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    device = choose_device()
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir, map_location=device)
    data = read_manifest(manifest)
    rows = spread_over_domains(data.rows, count)
    refs, recs = [], []
    for row in rows:
        wav = load_audio(
            data.audio_path(row), tokenizer.sample_rate, offset=row.offset, duration=row.duration
        )  # (1, S)
        refs.append(wav[0])
        recs.append(tokenizer.reconstruct(wav).float().cpu()[0, 0])
    speech = [row.domain == "speech" or bool(row.transcript) for row in rows]
    metrics = []
    for metric in reconstruction_metrics(refs, recs, tokenizer.sample_rate, speech=speech):
        metric.model = f"tokenizer {tokenizer.config.name} round trip"
        metrics.append(metric.to_dict())
    return {
        "tokenizer": {**tokenizer.identity(), "folder": str(tokenizer_dir),
                      "parameters": sum(p.numel() for p in tokenizer.parameters())},
        "clips": len(rows),
        "metrics": metrics,
    }
