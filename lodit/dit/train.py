"""DiT training on a latent cache (TTA, TTM, TTS, or all three at once).

:class:`DiTTrainConfig` is the whole run: the DiT (``dit``), the flow-matching objective
(``flow``), the frozen caption encoder (``text_encoder``), TTS conditioning (``tts``), which
tasks to train (``tasks``), the shared loop settings (``training``), the data (``data``), the
sampling defaults recorded in the checkpoint (``sampling``) and the TensorBoard previews
(``preview``). Widths that the data decides are filled in when the run starts
(:func:`lodit.dit.conditioned.resolve_dit_config`): the latent width from the cache, the text
width from the encoder, the per-frame width from ``tts``, the task embedding from ``tasks``.

The config classes are in :mod:`lodit.dit.train_config`, the dataset in :mod:`lodit.dit.train_data`.

Data: every clip of the cache whose task is trained (task = its manifest ``domain``: speech ->
tts, music -> ttm, audio -> tta; ``data.default_task`` when it has none). Caption clips
(TTA/TTM) are cropped to ``data.crop_frames``; speech clips (TTS) are used whole, because their
transcript covers the whole utterance. Latents are normalised with the cache's per-channel
statistics, which go into every checkpoint's config together with the cache's producer (the
tokenizer identity and folder), so sampling needs no cache.

One step (:meth:`DiTTask.training_batch`): caption states from the encoder (through a disk
cache), for TTS rows the transcript ids padded with filler to the clip's frames and a random
contiguous span to generate with the rest as an audio prompt (F5-TTS), the audio prompt dropped
alone (``tts.prompt_drop_prob``: text-only TTS, the whole utterance to generate), condition dropout
(caption, transcript and prompt dropped together), flow-matching noise/time/target, and the
masked loss over the frames to generate (every valid frame the model is not shown). Its
randomness comes from a generator seeded by ``(training.seed, step, micro-batch, process)``, so a
resumed run draws exactly what an uninterrupted one would.

Running: ``lodit train-dit --config configs/dit/tta.yaml --cache CACHE --out RUN`` on CPU or one
GPU; ``accelerate launch -m lodit.cli train-dit ...`` on several GPUs (``training.batch_size``
is the global batch); ``training.mixed_precision=bf16`` for bf16 autocast. Running the same
command again resumes from the newest checkpoint in ``--out``; ``--max-steps N`` stops an
invocation after step N (e.g. a job with a time limit) without shortening the LR schedule.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from accelerate import PartialState

from lodit.conditioning.tasks import TASKS, task_id
from lodit.conditioning.text_cache import TextEmbeddingCache
from lodit.conditioning.text_encoders import build_text_encoder
from lodit.conditioning.tts import PromptInfill, TextFrontEnd, random_prompt_mask
from lodit.config import to_dict
from lodit.data.batching import BucketBatchSampler, FixedBatchSampler
from lodit.data.latent_cache import PRODUCER_FIELDS, LatentCache
from lodit.dit.conditioned import (
    ConditionedDiT,
    Conditions,
    caption_states,
    resolve_dit_config,
)
from lodit.dit.flow import FlowMatching, condition_dropout_mask, flow_matching_loss
from lodit.dit.generator import Generator, GeneratorConfig, LatentSpace, check_tokenizer
from lodit.dit.train_config import DiTTrainConfig
from lodit.dit.train_data import DiTDataset, clip_task, collate_dit, resolve_tasks
from lodit.errors import LoditError
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer, TrainResult, TrainTask
from lodit.training.seed import seed_everything
from lodit.training.tracking import Tracker

log = logging.getLogger(__name__)

# Transcripts sampled to estimate the training data's speaking rate (frames per text unit).
RATE_SAMPLE = 2000


# ============================================================================ the task


class DiTBatch(NamedTuple):
    """One training micro-batch as the network sees it."""

    x_t: torch.Tensor  # (B, T, D) noisy latents
    t: torch.Tensor  # (B,) flow times
    target: torch.Tensor  # (B, T, D) velocity target
    cond: Conditions  # after condition dropout
    loss_mask: torch.Tensor  # (B, T) frames the loss counts: valid and not audio prompt
    dropped: torch.Tensor  # (B,) bool rows whose conditions were dropped
    truncated: int  # TTS rows whose transcript had more tokens than frames (cut to fit)
    prompt_dropped: torch.Tensor  # (B,) bool TTS rows that lost their audio prompt alone (tts.prompt_drop_prob)


class DiTTask(TrainTask):
    """Flow-matching training of a :class:`ConditionedDiT` on a latent cache."""

    def __init__(self, config: DiTTrainConfig, cache: LatentCache, text_encoder: Any, tasks: list[str], *,
                 default_seconds: float, tts_frames_per_unit: float, encoder_identity: str = ""):
        self.config = config
        self.cache = cache
        self.text = text_encoder  # frozen (a TextEncoder or its TextEmbeddingCache): never a trained module
        self.tasks = tasks
        self.frame_rate = float(cache.producer["frame_rate"])
        self.default_seconds = default_seconds
        self.tts_frames_per_unit = tts_frames_per_unit
        self.encoder_identity = encoder_identity
        if "tts" in tasks and not config.tts.enabled:
            raise LoditError("the data has speech (TTS) clips but tts.enabled is false; set tts.enabled=true "
                             "or train only caption tasks (tasks=[tta, ttm])")
        self.dit_config = resolve_dit_config(
            config.dit, latent_dim=cache.dim, text_dim=text_encoder.dim, tts=config.tts,
            num_tasks=len(TASKS) if len(tasks) > 1 else 0,
        )
        self.model = ConditionedDiT(self.dit_config, config.tts)
        self.flow = FlowMatching(config.flow)
        self.front_end = TextFrontEnd(config.tts.front_end, config.tts.language) if config.tts.enabled else None
        self._tokenizer: Tokenizer | None = None
        self._preview_warned = False
        self._micro = (-1, 0)  # (step, micro-batches already drawn at that step)

    # --------------------------------------------------------------------------- TrainTask

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def on_prepared(self, accelerator) -> None:
        encoder = self.text.encoder if isinstance(self.text, TextEmbeddingCache) else self.text
        encoder.to(accelerator.device)

    def check_resume(self, folder: Path) -> None:
        """Refuse to continue a checkpoint trained on latents of another tokenizer than this cache's."""
        try:
            recorded = json.loads((folder / "config.json").read_text())["latents"]["producer"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # unreadable configs are reported by the checkpoint loader itself
        for key in (*PRODUCER_FIELDS, "weights_hash"):
            have, want = self.cache.producer.get(key), recorded.get(key)
            if want is not None and have != want:
                what = "weights" if key == "weights_hash" else key
                raise LoditError(f"{folder} was trained on latents of a tokenizer with other {what} ({want!r}) than "
                                 f"latent cache {self.cache.root} ({have!r}); resume with the cache it was trained "
                                 "on, or train this cache into a new --out folder")

    def loss(self, phase: str, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = self.training_batch(batch, step)
        pred = self.trained()(inputs.x_t, inputs.t, inputs.cond)  # (B, T, D)
        loss = flow_matching_loss(pred, inputs.target, inputs.loss_mask)
        scalars = {"cond_dropped": float(inputs.dropped.float().mean())}
        with torch.no_grad():
            for task in set(batch["tasks"]):
                rows = torch.tensor([t == task for t in batch["tasks"]], device=pred.device)
                scalars[f"loss_{task}"] = float(
                    flow_matching_loss(pred[rows], inputs.target[rows], inputs.loss_mask[rows])
                )
        if self.front_end is not None:
            scalars["tts_truncated"] = float(inputs.truncated)
            speech = torch.tensor([t == "tts" for t in batch["tasks"]], device=pred.device)
            if speech.any():
                scalars["tts_prompt_dropped"] = float(inputs.prompt_dropped[speech].float().mean())
        return loss, scalars

    def export_config(self) -> dict:
        return to_dict(self.generator_config())

    def preview(self, batch: dict, step: int, tracker: Tracker) -> None:
        tokenizer = self._preview_tokenizer()
        if tokenizer is None:
            return
        cfg = self.config.preview
        prompts, transcripts, seconds = self._preview_requests(batch)
        model = self.modules()["model"]
        model.eval()
        with self.ema.swapped(model) if self.ema is not None else nullcontext():
            generator = Generator(model, self.generator_config(), text_encoder=self.text, tokenizer=tokenizer,
                                  device=self.device)
            for scale in cfg.cfg_scales:
                sampling = generator.config.sampling.with_changes(cfg=scale, steps=cfg.steps, sampler=cfg.sampler)
                result = generator.generate(prompts, seconds=seconds, transcripts=transcripts, sampling=sampling,
                                            seed=0)
                for row, wav in enumerate(result.waveforms):
                    tracker.log_audio(f"preview/{row}/cfg_{scale:g}", wav, result.sample_rate, step)

    # --------------------------------------------------------------------------- building blocks

    def generator_config(self) -> GeneratorConfig:
        """What sampling needs (``config.json`` of every checkpoint)."""
        return GeneratorConfig(
            dit=self.dit_config,
            tts=self.config.tts,
            text_encoder=self.config.text_encoder,
            text_encoder_identity=self.encoder_identity,
            latents=LatentSpace(producer=dict(self.cache.producer), mean=self.cache.mean.tolist(),
                                std=self.cache.std.tolist()),
            tasks=list(self.tasks),
            sampling=self.config.sampling,
            default_seconds=self.default_seconds,
            tts_frames_per_unit=self.tts_frames_per_unit,
        )

    def _generator(self, step: int) -> torch.Generator:
        """The random stream of the next micro-batch: a function of (seed, step, micro-batch,
        process) only, so resuming at any step redraws exactly what the first run drew."""
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        process = self.accelerator.process_index if self.accelerator is not None else 0
        entropy = [self.config.training.seed, step, micro, process]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1  # 63 bits
        return torch.Generator().manual_seed(seed)

    def training_batch(self, batch: dict, step: int) -> DiTBatch:
        """Conditions, noisy input, target and loss mask of one micro-batch (see the module docstring)."""
        generator = self._generator(step)
        device = self.device
        x0 = batch["latents"].to(device)  # (B, T, D), normalised by the dataset
        valid = batch["mask"].to(device)
        lengths = batch["lengths"].cpu()
        tasks = list(batch["tasks"])
        batch_size = x0.shape[0]
        text, text_mask = caption_states(self.text, list(batch["captions"]), device)
        task = torch.tensor([task_id(t) for t in tasks], device=device) if self.dit_config.num_tasks > 0 else None
        cond = Conditions(frame_mask=valid, duration=lengths.to(device).float() / self.frame_rate,
                          text=text, text_mask=text_mask, task=task)
        loss_mask = valid
        truncated = 0
        prompt_dropped = torch.zeros(batch_size, dtype=torch.bool, device=device)
        if self.front_end is not None:
            is_tts = torch.tensor([t == "tts" for t in tasks])
            transcripts = [words if t == "tts" else "" for words, t in zip(batch["transcripts"], tasks)]
            truncated = sum(len(self.front_end.tokens(words)) > int(n) for words, n in zip(transcripts, lengths))
            ids, _ = self.front_end.batch_to_frames(transcripts, lengths.tolist(), truncate=True)  # (B, T)
            tts = self.config.tts
            prompt = random_prompt_mask(lengths, tts.mask_min_frac, tts.mask_max_frac, generator)  # (B, T)
            prompt_dropped = condition_dropout_mask(batch_size, tts.prompt_drop_prob, generator, device,
                                                    key="tts.prompt_drop_prob") & is_tts.to(device)
            cond.tts_ids = ids.to(device)
        dropped = self.flow.dropout_mask(batch_size, generator, device)
        if self.front_end is not None:
            # A row without its prompt (dropped alone, or with every condition) is given no clean
            # frames, so all its valid frames are to be generated and all count in the loss.
            shown = prompt.to(device) & is_tts[:, None].to(device) & ~(prompt_dropped | dropped)[:, None]
            infill = PromptInfill.build(x0, shown, valid)
            cond.cond_audio, loss_mask = infill.cond_audio, infill.loss_mask
        cond = cond.drop(dropped)
        x_t, t, target = self.flow.training_inputs(x0, valid, generator)
        return DiTBatch(x_t, t, target, cond, loss_mask, dropped, int(truncated), prompt_dropped)

    def _preview_tokenizer(self) -> Tokenizer | None:
        if self._tokenizer is None:
            folder = self.cache.producer.get("checkpoint")
            if not folder or not Path(folder).is_dir():
                if not self._preview_warned:
                    log.warning("no audio previews: the latent cache records no tokenizer folder (found %r)", folder)
                    self._preview_warned = True
                return None
            tokenizer = Tokenizer.from_pretrained(folder)
            check_tokenizer(tokenizer, self.cache.producer, str(self.cache.root))
            self._tokenizer = tokenizer.to(self.device).eval()
        return self._tokenizer

    def _preview_requests(self, batch: dict) -> tuple[list[str], list[str], list[float | None]]:
        """Preview requests: the configured prompts, or the batch's first rows (a speech row at its
        own length, which its transcript fits; a caption row cut to ``preview.seconds``)."""
        cfg = self.config.preview
        if cfg.prompts:
            seconds = [p.seconds or (None if p.transcript else cfg.seconds) for p in cfg.prompts]
            return [p.prompt for p in cfg.prompts], [p.transcript for p in cfg.prompts], seconds
        rows = range(min(cfg.max_items, len(batch["tasks"])))
        speech = [batch["tasks"][i] == "tts" for i in rows]
        prompts = [batch["captions"][i] for i in rows]
        transcripts = [batch["transcripts"][i] if speech[i] else "" for i in rows]
        lengths = [int(batch["lengths"][i]) / self.frame_rate for i in rows]
        seconds = [lengths[i] if speech[i] else min(cfg.seconds, lengths[i]) for i in rows]
        return prompts, transcripts, seconds


# ============================================================================ assembling a run


def speaking_rate(cache: LatentCache, indices: Sequence[int], front_end: TextFrontEnd) -> float:
    """Frames per transcript unit over (a deterministic sample of) the TTS clips; 0 without any."""
    step = max(1, math.ceil(len(indices) / RATE_SAMPLE))
    frames = units = 0
    for i in list(indices)[::step]:
        count = len(front_end.units(cache.fields(i).get("transcript") or ""))
        if count:
            frames += int(cache.lengths[i])
            units += count
    return frames / units if units else 0.0


def build_training(
    config: DiTTrainConfig, run_dir: str | Path, *, text_encoder: Any = None
) -> tuple[DiTTask, ResumableLoader]:
    """The task and data loader of a run (``text_encoder``: an already built encoder to reuse)."""
    if not config.data.cache:
        raise LoditError("no latent cache given: pass --cache DIR or set data.cache in the config")
    cache = LatentCache(config.data.cache)
    for key in ("frame_rate", "latent_dim"):
        if key not in cache.producer:
            raise LoditError(f"latent cache {cache.root}: its producer lacks {key}; re-run `lodit encode`")
    all_tasks, untranscribed = [], set()
    for i in range(len(cache)):
        fields = cache.fields(i)
        all_tasks.append(clip_task(str(fields.get("domain") or ""), config.data.default_task))
        if all_tasks[-1] == "tts" and not str(fields.get("transcript") or "").strip():
            untranscribed.add(i)
    tasks = resolve_tasks(config.tasks, all_tasks, cache.root)
    if "tts" in tasks and untranscribed:
        log.warning("skipping %d speech clips without a transcript (TTS needs one)", len(untranscribed))
    indices = [i for i, t in enumerate(all_tasks) if t in tasks and i not in untranscribed]
    if not indices:
        raise LoditError(f"latent cache {cache.root} has no usable clips for tasks {', '.join(tasks)}")
    if len(indices) < len(cache):
        log.debug("training on %d of %d clips (tasks %s)", len(indices), len(cache), ", ".join(tasks))

    encoder = text_encoder
    if encoder is None:
        encoder_config = config.text_encoder
        if encoder_config.device == "auto":
            # This process's device: with `accelerate launch`, GPU k for process k (not all on GPU 0).
            encoder_config = replace(encoder_config, device=str(PartialState().device))
        encoder = build_text_encoder(encoder_config)
    text_cache_dir = Path(config.data.text_cache) if config.data.text_cache else Path(run_dir) / "text_cache"
    text = TextEmbeddingCache(text_cache_dir, encoder)

    clip_tasks = [all_tasks[i] for i in indices]
    frame_rate = float(cache.producer["frame_rate"])
    caption_lengths = [min(int(cache.lengths[i]), config.data.crop_frames)
                       for i, t in zip(indices, clip_tasks) if t != "tts"]
    default_seconds = (statistics.median(caption_lengths) if caption_lengths else config.data.crop_frames) / frame_rate
    rate = 0.0
    if config.tts.enabled:
        front_end = TextFrontEnd(config.tts.front_end, config.tts.language)
        rate = speaking_rate(cache, [i for i, t in zip(indices, clip_tasks) if t == "tts"], front_end)

    seed_everything(config.training.seed)  # the initial weights depend on the seed alone
    task = DiTTask(config, cache, text, tasks, default_seconds=float(default_seconds), tts_frames_per_unit=rate,
                   encoder_identity=encoder.identity())
    train = config.training
    dataset = DiTDataset(cache, indices, clip_tasks, config.data, train.seed)
    if config.data.batching == "bucket":
        sizes = ({"max_frames_per_batch": config.data.max_frames_per_batch} if config.data.max_frames_per_batch > 0
                 else {"batch_size": train.batch_size})
        sampler = BucketBatchSampler(dataset.lengths, num_buckets=config.data.num_buckets, seed=train.seed, **sizes)
    else:
        sampler = FixedBatchSampler(len(dataset), train.batch_size, seed=train.seed)
    loader = ResumableLoader(
        dataset, collate_dit, batch_sampler=sampler, seed=train.seed, num_workers=train.num_workers
    )
    return task, loader


def train_dit(config: DiTTrainConfig, run_dir: str | Path, *, resume: bool | str = True,
              text_encoder: Any = None, stop_at: int | None = None) -> TrainResult:
    """Train (or resume) a DiT run into ``run_dir``; returns the trainer's summary.

    ``stop_at`` ends this call after that step, with a checkpoint; the LR schedule still runs to
    ``training.max_steps`` and calling again continues the run."""
    task, loader = build_training(config, run_dir, text_encoder=text_encoder)
    resolved = replace(config, dit=task.dit_config, tasks=list(task.tasks))
    trainer = Trainer(config.training, run_dir, task, loader, resolved_config=resolved, resume=resume)
    return trainer.fit(stop_at=stop_at)


# ============================================================================ the command
