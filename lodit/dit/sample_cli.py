"""The ``lodit sample`` command: text prompts -> wav files with a trained DiT.

Requests come from ``--prompt`` (repeatable; with ``--transcript`` / ``--reference-audio`` /
``--reference-transcript`` given once for all prompts or once per prompt) or from
``--prompts-file``: plain text, one caption per line, or JSON Lines with ``prompt``,
``transcript``, ``seconds``, ``task`` (tta/ttm/tts), ``reference_audio`` (relative to the file's
folder) and ``reference_transcript`` per line. A TTS request may have an empty caption:
``--transcript`` alone is enough. A request's task is its ``task`` key, else ``--task``, else
``tts`` with a transcript and the checkpoint's first caption task without one; so a file can mix
TTA, TTM and TTS requests for a multi-task DiT.

Outputs: ``OUT/0000.wav``, ``OUT/0001.wav``, ... and ``OUT/samples.json`` with the settings used and,
per sample, its file, prompt, transcript, reference, task, seed, duration and solver cost. Every
file is written atomically. Request ``i`` uses seed ``--seed + i``, so a request's audio does not
depend on ``--batch-size`` or on the other requests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodit.conditioning.tasks import TASKS
from lodit.data.audio import save_audio
from lodit.dit.generator import MAX_SECONDS, MAX_STEPS, Generator
from lodit.errors import LoditError
from lodit.files import write_json

MAX_BATCH = 256  # requests generated together
REQUEST_KEYS = ("prompt", "transcript", "seconds", "task", "reference_audio", "reference_transcript")
SAMPLES_FILE = "samples.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="DiT run folder or checkpoint folder (from lodit train-dit)")
    parser.add_argument("--prompt", action="append", default=[], help="caption (repeatable)")
    parser.add_argument("--prompts-file", help="one caption per line, or JSONL with prompt/transcript/seconds/task/reference_audio/reference_transcript")
    parser.add_argument("--transcript", action="append", default=[], help="TTS: text to speak (once, or once per prompt)")
    parser.add_argument("--reference-audio", action="append", default=[], help="TTS: a recording of the voice to use")
    parser.add_argument("--reference-transcript", action="append", default=[], help="TTS: what the reference recording says")
    parser.add_argument("--seconds", type=float, help="length of each generated clip (default: the checkpoint's, or the speaking rate for TTS)")
    parser.add_argument("--task", choices=TASKS, help="task of every request without its own (prompts file 'task' key); "
                        "default: tts with a transcript, else the checkpoint's first caption task")
    parser.add_argument("--steps", type=int, help="solver steps (default: the checkpoint's sampling.steps)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the checkpoint's)")
    parser.add_argument("--sampler", help="euler | heun | midpoint | rk4 | adaptive")
    parser.add_argument("--schedule", help="uniform | shifted | sway")
    parser.add_argument("--negative-prompt", help="caption to guide away from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first request (request i uses seed + i)")
    parser.add_argument("--batch-size", type=int, default=8, help="requests generated together")
    parser.add_argument("--out", default="samples", help="output folder (default: samples)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the one the latent cache recorded)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")


def _spread(values: list[str], count: int, flag: str) -> list[str | None]:
    """A repeatable flag given zero times, once (for all requests) or once per request."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise LoditError(f"{flag} was given {len(values)} times for {count} prompts; give it once or once per prompt")
    return list(values)


def read_prompts_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Requests from a text file (one caption per non-blank line) or JSON Lines (``.jsonl``, or lines starting with ``{``)."""
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
            raise LoditError(f"{path}:{number}: unknown task {row['task']!r}; use one of {', '.join(TASKS)} or leave it out")
        if row.get("task") == "tts" and not row.get("transcript"):
            raise LoditError(f"{path}:{number}: task tts needs a transcript")
        requests.append({key: row.get(key) for key in REQUEST_KEYS})
    return requests


def collect_requests(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The requests of a command line: the prompts file, or the prompts and per-prompt flags."""
    if args.prompts_file:
        if args.prompt:
            raise LoditError("give prompts with --prompt or with --prompts-file, not both")
        requests = read_prompts_file(args.prompts_file)
        for request in requests:
            if request.get("seconds") is None:
                request["seconds"] = args.seconds
            if request.get("task") is None:
                request["task"] = args.task
        return requests
    prompts = list(args.prompt) or [""] * max(1, len(args.transcript))
    if not any(prompts) and not args.transcript:
        raise LoditError("nothing to generate: give --prompt, --transcript or --prompts-file")
    count = len(prompts)
    columns = {
        "transcript": _spread(args.transcript, count, "--transcript"),
        "reference_audio": _spread(args.reference_audio, count, "--reference-audio"),
        "reference_transcript": _spread(args.reference_transcript, count, "--reference-transcript"),
    }
    return [{"prompt": prompt, "seconds": args.seconds, "task": args.task, **{k: v[i] for k, v in columns.items()}}
            for i, prompt in enumerate(prompts)]


def check_tasks(requests: list[dict[str, Any]], trained: list[str]) -> None:
    """Refuse, before generating anything, requests for a task the DiT was not trained on."""
    for index, request in enumerate(requests):
        task = request.get("task")
        if task and task not in trained:
            raise LoditError(f"request {index} asks for {task} but this DiT was trained for {', '.join(trained)}; "
                             f"change its task or use a checkpoint trained on {task}")


def check_sizes(args: argparse.Namespace) -> None:
    """Bound every size the user typed, before loading a model."""
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise LoditError(f"--batch-size must be between 1 and {MAX_BATCH}, got {args.batch_size}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and 0 < args.seconds <= MAX_SECONDS):
        raise LoditError(f"--seconds must be more than 0 and at most {MAX_SECONDS:g} (one request's limit; "
                         f"generate long audio in parts), got {args.seconds:g}")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise LoditError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    if args.cfg is not None and not math.isfinite(args.cfg):
        raise LoditError(f"--cfg must be a finite number, got {args.cfg}")


def run(args: argparse.Namespace) -> int:
    check_sizes(args)
    requests = collect_requests(args)
    generator = Generator.from_pretrained(args.checkpoint, tokenizer=args.tokenizer, use_ema=not args.no_ema,
                                          device=args.device)
    check_tasks(requests, generator.tasks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    started = time.perf_counter()
    progress = tqdm(total=len(requests), desc="sample", unit="clip", disable=len(requests) <= args.batch_size)
    for start in range(0, len(requests), args.batch_size):
        chunk = requests[start : start + args.batch_size]
        result = generator.generate(
            [r["prompt"] or "" for r in chunk],
            seconds=[r["seconds"] for r in chunk],
            transcripts=[r["transcript"] for r in chunk],
            reference_audio=[r["reference_audio"] for r in chunk],
            reference_transcripts=[r["reference_transcript"] for r in chunk],
            task=[r["task"] for r in chunk],
            steps=args.steps,
            cfg=args.cfg,
            sampler=args.sampler,
            schedule=args.schedule,
            seed=args.seed + start,
            negative_prompt=args.negative_prompt,
        )
        settings = result.settings
        for offset, (request, wav) in enumerate(zip(chunk, result.waveforms)):
            index = start + offset
            name = f"{index:04d}.wav"
            save_audio(out / name, wav, result.sample_rate)
            samples.append({
                "file": name,
                "prompt": request["prompt"] or "",
                "transcript": request["transcript"] or "",
                "reference_audio": request["reference_audio"] or "",
                "reference_transcript": request["reference_transcript"] or "",
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
        } | {"seed": args.seed, "batch_size": args.batch_size, "use_ema": not args.no_ema, "task": args.task or "auto"},
        "wall_seconds": wall,
        "rtf": wall / max(produced, 1e-9),
        "samples": samples,
    }
    write_json(out / SAMPLES_FILE, summary, allow_nan=True)
    print(f"wrote {len(samples)} files to {out} ({produced:.1f} s of audio, RTF {summary['rtf']:.3f})")
    return 0
