"""Text -> audio with a trained DiT: the checkpoint's config, loading it, and generating waveforms.

A DiT checkpoint folder (``run/final/`` or ``run/checkpoints/step-N/``) holds ``config.json``
(:class:`GeneratorConfig`: the resolved DiT and TTS settings, the caption text encoder and its
identity, the trained tasks, the latent cache's producer and per-channel statistics, default
sampling settings) and ``model.safetensors`` / ``ema.safetensors`` (the :class:`ConditionedDiT`).
That is all sampling needs: no latent cache. The tokenizer that decodes the latents is the one
recorded in the producer (``producer["checkpoint"]``) unless another folder is given, and its
identity must match the producer's.

:meth:`Generator.generate` turns a batch of requests into waveforms:

- TTA/TTM: a caption and a duration (``seconds``, default: what the model was trained on);
- TTS: a transcript (+ optionally a caption), and optionally a reference audio with its
  transcript for the voice. The reference is encoded by the tokenizer and becomes the audio
  prompt that the generated speech continues (F5-TTS infilling); the transcript fed to the model is
  ``reference transcript + " " + transcript``. Without ``seconds`` the length comes from the
  reference's speaking rate, or without a reference from the training data's average rate.
  ``seconds`` is always the length of the *returned* audio: the reference is not part of it.

Every request draws its starting noise from its own generator seeded ``seed + i``, so a request
gives the same audio whichever batch it is in.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lodit.conditioning.tasks import TASKS, task_ids
from lodit.conditioning.text_encoders import TextEncoderConfig, build_text_encoder
from lodit.conditioning.tts import PromptInfill, TextFrontEnd, estimate_total_frames
from lodit.config import from_dict, to_dict
from lodit.data.audio import load_audio
from lodit.data.latent_cache import denormalize, normalize
from lodit.devices import choose_device
from lodit.dit.conditioned import ConditionedDiT, Conditions, TTSConfig, caption_states
from lodit.dit.model import DiTConfig
from lodit.errors import LoditError
from lodit.files import read_json
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.samplers.sample import SamplerConfig, initial_noise, sample
from lodit.training.checkpoint import (
    CONFIG_FILE,
    EMA_NAME,
    FINAL_DIR,
    MODEL_NAME,
    latest_checkpoint,
    load_weights,
)

CHECKPOINT_FORMAT = "lodit-dit"
# Limits of one request. Longer clips are far outside what a DiT trained on crops of seconds
# generates well (make them in parts); more solver steps than this change nothing audible.
MAX_SECONDS = 600.0
MAX_STEPS = 1000
# Rough memory per latent frame while sampling and decoding, in units of the DiT width times 4
# bytes: activations of one block with attention and the MLP, the solver's states, and the decoder.
_BYTES_PER_FRAME_PER_WIDTH = 4 * 64


@dataclass
class LatentSpace:
    """The latents a DiT was trained on: who made them and how they were normalised."""

    producer: dict[str, Any] = field(default_factory=dict)  # tokenizer identity + "checkpoint" folder
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def frame_rate(self) -> float:
        return float(self.producer["frame_rate"])


@dataclass
class GeneratorConfig:
    """``config.json`` of a DiT checkpoint: everything sampling needs besides the weights."""

    dit: DiTConfig
    tts: TTSConfig
    text_encoder: TextEncoderConfig
    latents: LatentSpace
    tasks: list[str] = field(default_factory=lambda: ["tta"])
    format: str = CHECKPOINT_FORMAT
    text_encoder_identity: str = ""  # checked at load: other weights would give other states
    sampling: SamplerConfig = field(default_factory=SamplerConfig)
    default_seconds: float = 10.0  # duration when a caption request gives none
    tts_frames_per_unit: float = 0.0  # training data's speaking rate, for TTS without reference/seconds

    @property
    def default_task(self) -> str:
        """What a request without a transcript asks for: the first caption task trained."""
        return next((task for task in self.tasks if task != "tts"), self.tasks[0])


@dataclass
class GenerationResult:
    waveforms: list[torch.Tensor]  # one (1, S) float32 CPU tensor per request
    sample_rate: int
    latents: list[torch.Tensor]  # the generated (denormalised) latents per request, (T_i, D)
    settings: dict[str, Any]  # what produced them (see Generator.generate)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its ``final/``, else its newest checkpoint)."""
    folder = Path(path)
    if not folder.is_dir():
        raise LoditError(f"{folder}: DiT checkpoint folder not found; pass a run folder or a checkpoint folder")
    if (folder / CONFIG_FILE).is_file():
        return folder
    if (folder / FINAL_DIR / CONFIG_FILE).is_file():
        return folder / FINAL_DIR
    latest = latest_checkpoint(folder)
    if latest is not None and (latest / CONFIG_FILE).is_file():
        return latest
    raise LoditError(f"{folder}: no {CONFIG_FILE} here (nor a final/ or checkpoints/step-* with one); "
                     f"pass the folder `lodit train-dit` wrote")


def read_generator_config(folder: str | os.PathLike) -> GeneratorConfig:
    """A DiT checkpoint's :class:`GeneratorConfig`; a folder of something else is a clear error."""
    path = Path(folder) / CONFIG_FILE
    data = read_json(path, missing=f"{path}: missing; a DiT checkpoint needs its config.json")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise LoditError(
            f"{path}: not a DiT checkpoint config (format {data.get('format') if isinstance(data, dict) else None!r}); "
            f"pass a folder written by `lodit train-dit`"
        )
    return from_dict(GeneratorConfig, data, source=str(path), saved=True)


def check_tokenizer(tokenizer: Tokenizer, producer: dict[str, Any], where: str) -> None:
    """Refuse a tokenizer other than the one whose latents the DiT was trained on."""
    identity = tokenizer.identity()
    for key in ("config_hash", "latent_dim", "frame_rate", "sample_rate", "weights_hash"):
        if key in producer and identity.get(key) != producer[key]:
            if key == "weights_hash":
                raise LoditError(f"{where}: the tokenizer's weights (hash {identity[key]}) are not the ones the DiT's "
                                 f"latents were made with (hash {producer[key]}); pass the tokenizer the latent "
                                 "cache was made with")
            raise LoditError(f"{where}: the tokenizer has {key} {identity.get(key)!r} but the DiT was trained on "
                             f"latents with {key} {producer[key]!r}; pass the tokenizer the latent cache was made with")


def _per_request(value: Any, count: int, name: str) -> list[Any]:
    """``value`` for each of ``count`` requests: a single value is repeated, a list must fit."""
    if value is None or isinstance(value, (str, bytes, os.PathLike, int, float, torch.Tensor)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise LoditError(f"{name} has {len(values)} entries for {count} prompts; give one per prompt or a single value")
    return values


def _without_label(identity: str) -> list[str]:
    """A text-encoder identity without its model label: the same weights loaded from a hub name
    or from a local copy are the same encoder."""
    name, _label, *rest = identity.split("|")
    return [name, *rest]


def _pad_tokens(states: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad caption states ``(B, L, dim)`` and mask ``(B, L)`` to ``length`` tokens."""
    extra = length - states.shape[1]
    if extra <= 0:
        return states, mask
    return torch.nn.functional.pad(states, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra), value=False)


def _frames_for_seconds(seconds: float, frame_rate: float) -> int:
    # ceil: the decoded audio is at least `seconds` long and is then trimmed to exactly that
    if not math.isfinite(seconds) or seconds <= 0:
        raise LoditError(f"a duration must be a positive number of seconds, got {seconds}")
    if seconds > MAX_SECONDS:
        raise LoditError(f"a duration of {seconds:g} s is too long: at most {MAX_SECONDS:g} s per request; "
                         "generate long audio in parts")
    return max(1, math.ceil(seconds * frame_rate - 1e-6))


def _checked(config: SamplerConfig) -> SamplerConfig:
    """``config`` if its step count and guidance scale are usable; a one-line error if not."""
    if not 1 <= config.steps <= MAX_STEPS:
        raise LoditError(f"steps must be between 1 and {MAX_STEPS}, got {config.steps}")
    if not math.isfinite(float(config.guidance.scale)):
        raise LoditError(f"the guidance scale must be a finite number, got {config.guidance.scale}")
    return config


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (GPU memory, or the machine's available RAM); None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


class Generator:
    """A trained DiT with its text encoder and tokenizer, ready to turn prompts into audio."""

    def __init__(
        self,
        model: ConditionedDiT,
        config: GeneratorConfig,
        *,
        text_encoder: Any,
        tokenizer: Tokenizer,
        device: torch.device | str | None = None,
        source: str = "",
        tokenizer_source: str = "",
    ):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model
        self.config = config
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.source = source
        self.tokenizer_source = tokenizer_source or str(config.latents.producer.get("checkpoint", ""))
        self.mean = torch.tensor(config.latents.mean, dtype=torch.float32)
        self.std = torch.tensor(config.latents.std, dtype=torch.float32)
        self.front_end = TextFrontEnd(config.tts.front_end, config.tts.language) if config.tts.enabled else None

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        tokenizer: str | os.PathLike | Tokenizer | None = None,
        use_ema: bool = True,
        device: torch.device | str | None = None,
        text_encoder_model: str | None = None,
    ) -> Generator:
        """Load a DiT checkpoint (a checkpoint folder, or a run folder: its ``final/`` or newest checkpoint).

        ``tokenizer``: a tokenizer folder or object; default the folder recorded in the latent
        cache's producer. ``use_ema``: the EMA weights when the checkpoint has them.
        ``text_encoder_model``: load the caption encoder from here instead of the recorded name
        (e.g. a local copy); its weights must be the ones the DiT was trained with.
        """
        folder = resolve_checkpoint(path)
        config = read_generator_config(folder)
        device = choose_device(device)

        model = ConditionedDiT(config.dit, config.tts)
        weights = folder / f"{EMA_NAME}.safetensors"
        if not (use_ema and weights.is_file()):
            weights = folder / f"{MODEL_NAME}.safetensors"
        load_weights(weights, model)
        model.to(device).eval()

        text_encoder = None
        if config.dit.text_dim > 0:
            encoder_config = TextEncoderConfig(**{**to_dict(config.text_encoder), "device": str(device)})
            if text_encoder_model is not None:
                encoder_config.model = text_encoder_model
            text_encoder = build_text_encoder(encoder_config)
            if config.text_encoder_identity and \
                    _without_label(text_encoder.identity()) != _without_label(config.text_encoder_identity):
                raise LoditError(f"{folder}: the caption encoder {encoder_config.name} "
                                 f"({encoder_config.model or 'offline default'}) has other weights than the one this "
                                 f"DiT was trained with ({config.text_encoder_identity}); pass the same model")

        if tokenizer is None:
            recorded = config.latents.producer.get("checkpoint")
            if not recorded:
                raise LoditError(f"{folder}: the latent cache recorded no tokenizer folder; pass one (--tokenizer)")
            tokenizer = recorded
        tokenizer_source = "<given>" if isinstance(tokenizer, Tokenizer) else str(tokenizer)
        if not isinstance(tokenizer, Tokenizer):
            tokenizer_path = Path(tokenizer)
            if not tokenizer_path.is_dir():
                raise LoditError(f"tokenizer folder {tokenizer_path} not found; pass the tokenizer the latent cache "
                                 f"was made with (--tokenizer)")
            tokenizer = Tokenizer.from_pretrained(tokenizer_path)
        check_tokenizer(tokenizer, config.latents.producer, str(folder))
        tokenizer.to(device).eval()
        return cls(model, config, text_encoder=text_encoder, tokenizer=tokenizer, device=device, source=str(folder),
                   tokenizer_source=tokenizer_source)

    # ------------------------------------------------------------------------------ properties

    @property
    def sample_rate(self) -> int:
        return int(self.tokenizer.sample_rate)

    @property
    def frame_rate(self) -> float:
        return self.config.latents.frame_rate

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    # ------------------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seconds: float | Sequence[float | None] | None = None,
        transcripts: Sequence[str | None] | None = None,
        reference_audio: Sequence[str | os.PathLike | torch.Tensor | None]
        | str
        | os.PathLike
        | torch.Tensor
        | None = None,
        reference_transcripts: Sequence[str | None] | str | None = None,
        task: str | Sequence[str | None] | None = None,
        sampling: SamplerConfig | None = None,
        seed: int | Sequence[int] = 0,
        negative_prompt: str | None = None,
    ) -> GenerationResult:
        """Waveforms for a batch of requests, one per entry of ``prompts`` (captions; may be empty for TTS).

        ``seconds``, ``transcripts``, ``reference_audio`` (a path, or a ``(1, S)``/``(S,)`` tensor at
        the tokenizer's sample rate), ``reference_transcripts`` and ``task`` take one value for all
        requests or one per request. ``task`` is ``tta``/``ttm``/``tts``; where it is None: ``tts``
        for a request with a transcript, otherwise the checkpoint's first caption task (a batch may
        mix tasks, e.g. TTA and TTM prompts for a multi-task DiT). ``sampling``: the solver, steps,
        schedule and guidance (default: the checkpoint's; change a few with
        ``generator.config.sampling.with_changes(steps=..., cfg=...)``). ``seed`` is the first request's
        seed (request ``i`` uses ``seed + i``) or one seed per request. ``settings`` in the result
        records all of it plus ``nfe``, ``model_calls``, ``seconds`` per request and ``rtf``
        (wall time / seconds of audio produced).
        """
        prompts = [str(p) for p in prompts]
        count = len(prompts)
        if count == 0:
            raise LoditError("no prompts to generate; give at least one prompt")
        transcripts_ = [t or "" for t in _per_request(transcripts, count, "transcripts")]
        references = _per_request(reference_audio, count, "reference_audio")
        reference_texts = [t or "" for t in _per_request(reference_transcripts, count, "reference_transcripts")]
        seconds_ = _per_request(seconds, count, "seconds")
        seeds = [int(seed) + i for i in range(count)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != count:
            raise LoditError(f"{len(seeds)} seeds for {count} prompts; give one seed or one per prompt")
        tasks = [self._task_for(i, chosen, text)
                 for i, (chosen, text) in enumerate(zip(_per_request(task, count, "task"), transcripts_))]

        sampler_config = _checked(sampling or self.config.sampling)
        started = time.perf_counter()
        with torch.no_grad():
            prompt_latents = [self._reference_latents(ref, i) if ref is not None else None
                              for i, ref in enumerate(references)]
            plan = [self._plan(i, tasks[i], transcripts_[i], prompt_latents[i], reference_texts[i], seconds_[i])
                    for i in range(count)]
            self._check_memory(plan)
            cond, prompt_mask = self._conditions(prompts, tasks, plan, prompt_latents)
            uncond = cond.unconditional()
            if negative_prompt:
                # Guidance pushes away from the negative caption instead of from "no caption".
                text, text_mask = caption_states(self.text_encoder, [negative_prompt] * count, self.device)
                length = max(text.shape[1], cond.text.shape[1])
                cond.text, cond.text_mask = _pad_tokens(cond.text, cond.text_mask, length)
                uncond.text, uncond.text_mask = _pad_tokens(text, text_mask, length)
            noise = self._noise(plan, seeds)  # (B, T, D)
            result = sample(self.model.velocity_fn, noise, cond.as_dict(), uncond.as_dict(), sampler_config,
                            mask=cond.frame_mask)
            waveforms, latents = self._decode(result.x0, plan, cond, prompt_mask)
        elapsed = time.perf_counter() - started
        produced = [w.shape[-1] / self.sample_rate for w in waveforms]
        settings = {
            "checkpoint": self.source,
            "tokenizer": self.tokenizer_source,
            "tasks": tasks,
            "steps": sampler_config.steps,
            "cfg": sampler_config.guidance.scale,
            "sampler": sampler_config.sampler,
            "schedule": sampler_config.schedule,
            "seeds": seeds,
            "negative_prompt": negative_prompt or "",
            "seconds": produced,
            "nfe": result.nfe,
            "model_calls": result.model_calls,
            "wall_seconds": elapsed,
            "rtf": elapsed / max(sum(produced), 1e-9),
            "device": str(self.device),
            "sample_rate": self.sample_rate,
        }
        return GenerationResult(waveforms=waveforms, sample_rate=self.sample_rate, latents=latents, settings=settings)

    # ------------------------------------------------------------------------------ internals

    def _task_for(self, index: int, task: str | None, transcript: str) -> str:
        """Request ``index``'s task: the given one, else tts with a transcript, else the default caption task."""
        chosen = task or ("tts" if transcript else self.config.default_task)
        if chosen not in TASKS:
            raise LoditError(f"prompt {index}: unknown task {chosen!r}; choose one of: {', '.join(TASKS)}")
        if chosen not in self.config.tasks:
            raise LoditError(f"prompt {index}: this DiT was trained for {', '.join(self.config.tasks)}, not {chosen}; "
                             f"use a checkpoint trained on {chosen}")
        if chosen == "tts" and not transcript:
            raise LoditError(f"prompt {index}: a TTS request needs a transcript (--transcript)")
        return chosen

    def _check_memory(self, plan: list[dict[str, Any]]) -> None:
        """Refuse, before allocating anything, a batch that can't fit in the device's free memory."""
        free = available_memory(self.device)
        if free is None:
            return
        longest = max(p["total"] for p in plan)
        width = max(self.model.latent_dim, getattr(self.config.dit, "width", 0))
        per_frame = width * _BYTES_PER_FRAME_PER_WIDTH
        needed = len(plan) * longest * per_frame
        if needed > free:
            fits = free / (len(plan) * per_frame * self.frame_rate)
            raise LoditError(f"{len(plan)} request(s) of {longest / self.frame_rate:.0f} s need about "
                             f"{needed / 2**30:.1f} GiB but {self.device} has {free / 2**30:.1f} GiB free: at most "
                             f"about {fits:.0f} s per request at this batch size; lower --seconds or --batch-size")
        for index, entry in enumerate(plan):
            if entry["total"] > MAX_SECONDS * self.frame_rate:
                raise LoditError(f"prompt {index}: {entry['total'] / self.frame_rate:.0f} s is too long: at most "
                                 f"{MAX_SECONDS:g} s per request (a long transcript needs --seconds or splitting)")

    def _reference_latents(self, reference: Any, index: int) -> torch.Tensor:
        """A reference recording as normalised latents ``(T_p, D)`` on the generator's device."""
        if isinstance(reference, torch.Tensor):
            wav = reference.float().reshape(1, -1)  # mono at the tokenizer's rate
        else:
            wav = torch.as_tensor(load_audio(reference, sample_rate=self.sample_rate, channels="mix")).reshape(1, -1)
        if wav.shape[-1] == 0:
            raise LoditError(f"reference audio {index} is empty")
        latents = self.tokenizer.encode(wav.to(self.device))[0].float()  # (T_p, D)
        return normalize(latents, self.mean, self.std)

    def _plan(self, index: int, task: str, transcript: str, prompt: torch.Tensor | None,
              reference_text: str, seconds: float | None) -> dict[str, Any]:
        """Frames of one request: ``prompt`` (reference frames), ``total``, ``samples`` to return, ``text``."""
        prompt_frames = 0 if prompt is None else prompt.shape[0]
        if prompt is not None and task != "tts":
            raise LoditError(f"prompt {index}: a reference audio is only used for TTS; give a transcript too")
        if prompt is not None and not reference_text:
            raise LoditError(f"prompt {index}: the reference audio needs its transcript (--reference-transcript)")
        text = f"{reference_text} {transcript}".strip() if task == "tts" else ""
        if seconds is not None:
            generated = _frames_for_seconds(float(seconds), self.frame_rate)
            samples = round(float(seconds) * self.sample_rate)
        else:
            if task != "tts":
                generated = _frames_for_seconds(self.config.default_seconds, self.frame_rate)
            elif prompt is not None:
                generated = (
                    estimate_total_frames(prompt_frames, reference_text, transcript, self.front_end) - prompt_frames
                )
            elif self.config.tts_frames_per_unit > 0:
                units = len(self.front_end.units(transcript))
                generated = max(1, round(self.config.tts_frames_per_unit * units))
            else:
                raise LoditError(f"prompt {index}: no duration given and no speaking rate known; pass --seconds")
            samples = generated * self.tokenizer.hop_length
        return {"prompt": prompt_frames, "total": prompt_frames + generated, "samples": samples, "text": text}

    def _conditions(self, prompts, tasks, plan, prompt_latents) -> tuple[Conditions, torch.Tensor | None]:
        """The batch's conditions and its prompt mask ``(B, T)`` (None without TTS)."""
        device = self.device
        totals = torch.tensor([p["total"] for p in plan], dtype=torch.long)
        frames = int(totals.max())
        frame_mask = (torch.arange(frames)[None, :] < totals[:, None]).to(device)  # (B, T)
        duration = (totals.float() / self.frame_rate).to(device)
        text = text_mask = None
        if self.config.dit.text_dim > 0:
            text, text_mask = caption_states(self.text_encoder, prompts, device)
        tts_ids = cond_audio = prompt_mask = None
        if self.config.tts.enabled:
            tts_ids, _ = self.front_end.batch_to_frames([p["text"] for p in plan], totals.tolist())
            tts_ids = tts_ids.to(device)
            dim = self.model.latent_dim
            stacked = torch.zeros(len(plan), max(1, max(p["prompt"] for p in plan)), dim, device=device)
            for row, latents in enumerate(prompt_latents):
                if latents is not None:
                    stacked[row, : latents.shape[0]] = latents
            lengths = torch.tensor([p["prompt"] for p in plan], dtype=torch.long, device=device)
            infill = PromptInfill.from_prompt(stacked, lengths, totals.to(device))
            cond_audio, prompt_mask = infill.cond_audio, infill.prompt_mask
        task = task_ids(tasks).to(device) if self.config.dit.num_tasks > 0 else None
        cond = Conditions(frame_mask=frame_mask, duration=duration, text=text, text_mask=text_mask,
                          tts_ids=tts_ids, cond_audio=cond_audio, task=task)
        return cond, prompt_mask

    def _noise(self, plan, seeds) -> torch.Tensor:
        frames = max(p["total"] for p in plan)
        noise = torch.zeros(len(plan), frames, self.model.latent_dim)
        for row, (entry, seed) in enumerate(zip(plan, seeds)):
            generator = torch.Generator().manual_seed(seed)
            noise[row, : entry["total"]] = initial_noise((entry["total"], self.model.latent_dim), generator)
        return noise.to(self.device)

    def _decode(self, x0: torch.Tensor, plan, cond: Conditions,
                prompt_mask: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each request's generated audio: the prompt frames are put back (they were given, not
        generated), the whole sequence is decoded so the boundary has context, then the prompt's
        samples are cut off and the rest trimmed to the requested length."""
        if prompt_mask is not None:
            x0 = torch.where(prompt_mask[..., None], cond.cond_audio, x0)  # (B, T, D)
        hop = self.tokenizer.hop_length
        waveforms, latents = [], []
        for row, entry in enumerate(plan):
            frames = denormalize(x0[row, : entry["total"]].float(), self.mean, self.std)  # (T_i, D)
            wav = self.tokenizer.decode(frames[None])[0].float().cpu()  # (1, T_i * hop)
            start = entry["prompt"] * hop
            wav = wav[:, start : start + entry["samples"]]
            if wav.shape[-1] < entry["samples"]:
                wav = torch.nn.functional.pad(wav, (0, entry["samples"] - wav.shape[-1]))
            waveforms.append(wav)
            latents.append(frames[entry["prompt"] :].cpu())
        return waveforms, latents
