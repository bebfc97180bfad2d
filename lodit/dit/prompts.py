"""Prompts files, and sampling a list of requests into a folder of wav files.

A prompts file is plain text (one caption per line) or JSON Lines with ``prompt``,
``transcript``, ``seconds``, ``task`` (tta/ttm/tts), ``reference_audio`` (relative to the file's
folder) and ``reference_transcript`` per line. A TTS request may have an empty caption.

:func:`sample_to_folder` writes ``OUT/0000.wav``, ``OUT/0001.wav``, ... and ``OUT/samples.json``
(the settings used and, per sample, its file, prompt, transcript, reference, task, seed, duration
and solver cost), every file atomically. Request ``i`` uses seed ``seed + i``, so a request's audio
depends neither on ``batch_size`` nor on the other requests. ``lodit sample``, the experiment
runner and users call it; :func:`sample_prompts_file` does the same from a checkpoint folder and
a prompts file.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodit.conditioning.tasks import TASKS
from lodit.data.audio import save_audio
from lodit.dit.generator import MAX_SECONDS, Generator
from lodit.errors import LoditError
from lodit.files import write_json
from lodit.samplers.sample import SamplerConfig

MAX_BATCH = 256  # requests generated together
REQUEST_KEYS = ("prompt", "transcript", "seconds", "task", "reference_audio", "reference_transcript")
SAMPLES_FILE = "samples.json"


def read_prompts_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Requests from a text file (one caption per non-blank line) or JSON Lines (``.jsonl``, or
    lines starting with ``{``)."""
    path = Path(path)
    if path.is_dir():
        raise LoditError(f"prompts file {path} is a folder; give a text or JSONL file of prompts")
    if not path.is_file():
        raise LoditError(f"prompts file {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoditError(f"prompts file {path} is not UTF-8 text (bad byte at {exc.start}); save it as UTF-8") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise LoditError(f"prompts file {path} is empty; write one prompt per line (or JSONL)")
    as_json = path.suffix == ".jsonl" or lines[0][1].startswith("{")
    requests = []
    for number, line in lines:
        if not as_json:
            requests.append({"prompt": line})
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoditError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LoditError(f"{path}:{number}: each line must be a JSON object with a prompt and/or transcript")
        unknown = sorted(set(row) - set(REQUEST_KEYS))
        if unknown:
            raise LoditError(f"{path}:{number}: unknown key(s) {', '.join(unknown)}; use {', '.join(REQUEST_KEYS)}")
        if not (row.get("prompt") or row.get("transcript")):
            raise LoditError(f"{path}:{number}: needs a prompt or a transcript")
        if row.get("reference_audio"):
            reference = Path(row["reference_audio"])
            row["reference_audio"] = str(reference if reference.is_absolute() else path.parent / reference)
        seconds = row.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise LoditError(f"{path}:{number}: seconds must be a number, got {seconds!r}")
        if seconds is not None and not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
            raise LoditError(f"{path}:{number}: seconds must be more than 0 and at most {MAX_SECONDS:g}, got {seconds}")
        if row.get("task") is not None and row["task"] not in TASKS:
            raise LoditError(
                f"{path}:{number}: unknown task {row['task']!r}; use one of {', '.join(TASKS)} or leave it out"
            )
        if row.get("task") == "tts" and not row.get("transcript"):
            raise LoditError(f"{path}:{number}: task tts needs a transcript")
        requests.append({key: row.get(key) for key in REQUEST_KEYS})
    return requests


def check_tasks(requests: list[dict[str, Any]], trained: list[str]) -> None:
    """Refuse, before generating anything, requests for a task the DiT was not trained on."""
    for index, request in enumerate(requests):
        task = request.get("task")
        if task and task not in trained:
            raise LoditError(f"request {index} asks for {task} but this DiT was trained for {', '.join(trained)}; "
                             f"change its task or use a checkpoint trained on {task}")


def sample_to_folder(
    generator: Generator,
    requests: list[dict[str, Any]],
    out: str | os.PathLike,
    *,
    sampling: SamplerConfig | None = None,
    seed: int = 0,
    batch_size: int = 8,
    negative_prompt: str | None = None,
    task: str | None = None,
    use_ema: bool = True,
) -> dict[str, Any]:
    """Generate every request (dicts with the :data:`REQUEST_KEYS`) into ``out``; returns ``samples.json``'s content.

    ``sampling``: default the checkpoint's; ``negative_prompt``: a caption to guide away from.
    ``task`` (recorded in ``samples.json``) is the task requests without their own were given, and
    ``use_ema`` whether ``generator`` holds the EMA weights: both only describe the run.
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise LoditError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
    check_tasks(requests, generator.tasks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    started = time.perf_counter()
    progress = tqdm(total=len(requests), desc="sample", unit="clip", disable=len(requests) <= batch_size)
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        result = generator.generate(
            [r.get("prompt") or "" for r in chunk],
            seconds=[r.get("seconds") for r in chunk],
            transcripts=[r.get("transcript") for r in chunk],
            reference_audio=[r.get("reference_audio") for r in chunk],
            reference_transcripts=[r.get("reference_transcript") for r in chunk],
            task=[r.get("task") for r in chunk],
            sampling=sampling,
            seed=seed + start,
            negative_prompt=negative_prompt,
        )
        settings = result.settings
        for offset, (request, wav) in enumerate(zip(chunk, result.waveforms)):
            name = f"{start + offset:04d}.wav"
            save_audio(out / name, wav, result.sample_rate)
            samples.append({
                "file": name,
                "prompt": request.get("prompt") or "",
                "transcript": request.get("transcript") or "",
                "reference_audio": request.get("reference_audio") or "",
                "reference_transcript": request.get("reference_transcript") or "",
                "task": settings["tasks"][offset],
                "seed": settings["seeds"][offset],
                "seconds": settings["seconds"][offset],
                "nfe": settings["nfe"],
                "model_calls": settings["model_calls"],
            })
        progress.update(len(chunk))
    progress.close()
    wall = time.perf_counter() - started
    produced = sum(s["seconds"] for s in samples)
    summary = {
        "settings": {
            key: settings[key]
            for key in ("checkpoint", "tokenizer", "steps", "cfg", "sampler", "schedule", "negative_prompt",
                        "device", "sample_rate")
        } | {"seed": seed, "batch_size": batch_size, "use_ema": use_ema, "task": task or "auto"},
        "wall_seconds": wall,
        "rtf": wall / max(produced, 1e-9),
        "samples": samples,
    }
    write_json(out / SAMPLES_FILE, summary, allow_nan=True)
    return summary


def sample_prompts_file(
    checkpoint: str | os.PathLike,
    prompts_file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sampling: SamplerConfig | None = None,
    seed: int = 0,
    batch_size: int = 8,
    use_ema: bool = True,
    tokenizer: str | os.PathLike | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """:func:`sample_to_folder` for every request of ``prompts_file`` with the DiT at ``checkpoint``."""
    requests = read_prompts_file(prompts_file)
    generator = Generator.from_pretrained(checkpoint, tokenizer=tokenizer, use_ema=use_ema, device=device)
    return sample_to_folder(generator, requests, out, sampling=sampling, seed=seed, batch_size=batch_size,
                            use_ema=use_ema)
