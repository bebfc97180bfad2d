"""The Generate tab: a caption or transcript (plus an optional voice reference) -> audio, mel images, settings.

:func:`generate` checks a :class:`GenerateRequest` before any model runs, so a mistake comes back
as one line (:class:`~lodit.errors.LoditError`) instead of a traceback: no caption and no
transcript, a task the checkpoint was not trained for, a reference without its transcript or at a
rate below the model's, a reference longer than the audio to generate, out-of-range sampler
settings. It then calls :meth:`Generator.generate` (``batch`` requests with seeds ``seed``,
``seed + 1``, ...) and writes, into one folder per request, ``sample-<i>.wav`` and ``mel-<i>.png``
per clip, ``settings.json`` (what produced them: the generator's settings with NFE, model calls and
RTF, plus the request) and ``lodit-samples.zip`` holding all of it for the download button.

``seconds`` is, as everywhere in lodit, the length of the *generated* audio: a voice reference is
not part of it. With a reference, that length must be at least the reference's: the DiT learned to
continue an utterance from a prompt that is a minority of it (``tts.mask_min_frac``: F5-TTS's
0.7-1.0 of the frames are generated), and a reference longer than what it continues is outside that.
"""

from __future__ import annotations

import copy
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lodit.app.media import AudioInput, mel_image, read_audio_input, write_wav
from lodit.conditioning.tasks import TASKS
from lodit.conditioning.tts import estimate_total_frames
from lodit.errors import LoditError
from lodit.files import write_json
from lodit.samplers.schedules import SCHEDULES
from lodit.samplers.solvers import SOLVERS

MAX_BATCH = 8  # clips per request; the page has this many players
MAX_SECONDS = 60.0
MAX_STEPS = 1000
MAX_REFERENCE_SECONDS = 30.0
ARCHIVE = "lodit-samples.zip"

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)


@dataclass
class GenerateRequest:
    """One press of the Generate button. ``task`` ``auto``: TTS with a transcript, else the
    checkpoint's first caption task. ``seconds`` 0: the checkpoint's default (captions) or the
    speaking rate's estimate (TTS). ``cfg_interval``: guidance only for ``lo <= t <= hi`` (t = 1 is noise)."""

    prompt: str = ""
    transcript: str = ""
    reference_audio: AudioInput = None
    reference_transcript: str = ""
    task: str = "auto"
    seconds: float = 0.0
    sampler: str = "euler"
    steps: int = 20
    schedule: str = "uniform"
    cfg: float = 3.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    batch: int = 1


@dataclass
class GeneratedClip:
    wav: Path
    mel: Path
    seconds: float
    seed: int
    task: str


@dataclass
class GenerateOutput:
    clips: list[GeneratedClip]
    settings: dict[str, Any]  # also in settings.json
    archive: Path  # zip of the wavs, mel images and settings.json
    folder: Path
    sample_rate: int
    waveforms: list[torch.Tensor] = field(repr=False, default_factory=list)  # (1, S) each


def defaults_for(generator) -> GenerateRequest:
    """A request holding the checkpoint's own sampling settings (what the page starts with)."""
    sampling = generator.config.sampling
    return GenerateRequest(sampler=sampling.sampler, steps=int(sampling.steps), schedule=sampling.schedule,
                           cfg=float(sampling.guidance.scale), cfg_interval=tuple(sampling.guidance.interval))


def check_request(request: GenerateRequest, generator) -> str:
    """The request's task after checking everything that does not need a model run; a LoditError otherwise."""
    prompt, transcript = request.prompt.strip(), request.transcript.strip()
    if not prompt and not transcript:
        raise LoditError("the prompt is empty: write a caption (sound or music) or a transcript (speech)")
    task = request.task or "auto"
    if task == "auto":
        task = "tts" if transcript else generator.config.default_task
    if task not in TASKS:
        raise LoditError(f"unknown task {task!r}; choose auto or one of: {', '.join(TASKS)}")
    if task not in generator.tasks:
        raise LoditError(f"this checkpoint was trained for {', '.join(generator.tasks)}, not {task}; "
                         f"choose another task or checkpoint")
    if task == "tts" and not transcript:
        raise LoditError("a speech (TTS) request needs a transcript: write what should be said")
    if task != "tts" and not prompt:
        raise LoditError(f"a {task.upper()} request needs a caption: describe the sound")
    if request.reference_audio is not None and task != "tts":
        raise LoditError("a reference voice is only used for speech (TTS); give a transcript or remove the reference")
    if request.reference_audio is not None and not request.reference_transcript.strip():
        raise LoditError("the reference audio needs its transcript: write what the reference says")
    if not 1 <= int(request.batch) <= MAX_BATCH:
        raise LoditError(f"batch must be between 1 and {MAX_BATCH}, got {request.batch}")
    if not 1 <= int(request.steps) <= MAX_STEPS:
        raise LoditError(f"steps must be between 1 and {MAX_STEPS}, got {request.steps}")
    if not 0 <= float(request.seconds) <= MAX_SECONDS:
        raise LoditError(f"seconds must be between 0 (automatic) and {MAX_SECONDS:g}, got {request.seconds}")
    if request.sampler not in SOLVERS:
        raise LoditError(f"unknown sampler {request.sampler!r}; choose one of: {', '.join(SOLVERS.names())}")
    if request.schedule not in SCHEDULES:
        raise LoditError(f"unknown schedule {request.schedule!r}; choose one of: {', '.join(SCHEDULES.names())}")
    if float(request.cfg) < 0:
        raise LoditError(f"the CFG scale must be >= 0 (1 = no guidance), got {request.cfg}")
    lo, hi = (float(v) for v in request.cfg_interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise LoditError(f"the CFG interval must satisfy 0 <= from <= to <= 1, got {lo:g} .. {hi:g}")
    return task


def generate(
    generator, request: GenerateRequest, folder: str | Path, *, progress: Progress | None = None,
) -> GenerateOutput:
    """Run one request (see the module docstring); every file goes into ``folder``."""
    task = check_request(request, generator)
    folder = Path(folder)
    report = progress or (lambda fraction, text: None)
    reference = None
    if request.reference_audio is not None:
        report(0.0, "reading the reference")
        reference = read_audio_input(request.reference_audio, generator.sample_rate, what="reference audio",
                                     max_seconds=MAX_REFERENCE_SECONDS)
        _check_reference_length(generator, reference, request)
    seconds = float(request.seconds) or None
    batch = int(request.batch)
    report(0.0, "sampling")
    sampling = generator.config.sampling.with_changes(
        steps=int(request.steps), cfg=float(request.cfg), sampler=request.sampler, schedule=request.schedule,
        cfg_interval=request.cfg_interval)
    result = _reporting(generator, report).generate(
        [request.prompt.strip()] * batch,
        seconds=seconds,
        transcripts=request.transcript.strip() if task == "tts" else None,
        reference_audio=reference,
        reference_transcripts=request.reference_transcript.strip() if reference is not None else None,
        task=task,
        sampling=sampling,
        seed=int(request.seed),
    )
    report(1.0, "writing files")
    clips = []
    for i, wav in enumerate(result.waveforms):
        clips.append(GeneratedClip(
            wav=write_wav(folder / f"sample-{i}.wav", wav, result.sample_rate),
            mel=mel_image(wav, result.sample_rate, folder / f"mel-{i}.png",
                          title=f"sample {i}: seed {result.settings['seeds'][i]}"),
            seconds=result.settings["seconds"][i], seed=result.settings["seeds"][i], task=result.settings["tasks"][i]))
    request_fields = {k: v for k, v in asdict(request).items() if k != "reference_audio"}
    request_fields["reference_audio"] = (
        None if reference is None else f"{reference.shape[-1] / result.sample_rate:.2f} s"
    )
    settings = {**result.settings, "cfg_interval": list(request.cfg_interval), "request": request_fields}
    settings_path = folder / "settings.json"
    write_json(settings_path, settings, allow_nan=True)
    archive = folder / ARCHIVE
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for clip in clips:
            zf.write(clip.wav, clip.wav.name)
            zf.write(clip.mel, clip.mel.name)
        zf.write(settings_path, settings_path.name)
    return GenerateOutput(clips=clips, settings=settings, archive=archive, folder=folder,
                          sample_rate=result.sample_rate, waveforms=result.waveforms)


def _check_reference_length(generator, reference: torch.Tensor, request: GenerateRequest) -> None:
    """A reference longer than the audio to generate is refused (see the module docstring)."""
    rate = generator.sample_rate
    ref_seconds = reference.shape[-1] / rate
    if request.seconds:
        target = float(request.seconds)
    else:
        frames = generator.tokenizer.num_frames(reference.shape[-1])
        total = estimate_total_frames(frames, request.reference_transcript.strip(), request.transcript.strip(),
                                      generator.front_end)
        target = (total - frames) / generator.frame_rate
        if target > MAX_SECONDS:
            raise LoditError(f"at the reference's speaking rate the transcript takes {target:.1f} s, more than "
                             f"{MAX_SECONDS:g} s; give the seconds, or a reference transcript that matches its audio")
    if ref_seconds > target:
        raise LoditError(f"the reference ({ref_seconds:.2f} s) is longer than the speech to generate ({target:.2f} s); "
                         f"give more seconds, a longer transcript or a shorter reference")


class _ProgressModel:
    """The generator's network seen through a wrapper that reports sampling progress.

    Every velocity evaluation receives the current time ``t`` (1 = noise, 0 = data), so ``1 - t`` is
    how far sampling has come, whatever the solver (adaptive ones included). Everything else is the
    wrapped model's.
    """

    def __init__(self, model, report: Progress):
        self._model = model
        self._report = report

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def velocity_fn(self, x, t, condition):
        self._report(float(1.0 - t.max()), "sampling")
        return self._model.velocity_fn(x, t, condition)


def _reporting(generator, report: Progress):
    """A shallow copy of ``generator`` whose network reports progress.

    The copy shares the loaded network, text encoder and tokenizer (nothing is loaded again) and
    leaves the shared generator untouched, so requests don't see each other's progress callbacks.
    """
    view = copy.copy(generator)
    view.model = _ProgressModel(generator.model, report)
    return view
