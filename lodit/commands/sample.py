"""``lodit sample``: text prompts -> wav files with a trained DiT (see :mod:`lodit.dit.prompts`).

Requests come from ``--prompt`` (repeatable; with ``--transcript`` / ``--reference-audio`` /
``--reference-transcript`` given once for all prompts or once per prompt) or from
``--prompts-file`` (text or JSON Lines, see :func:`lodit.dit.prompts.read_prompts_file`). A
request's task is its ``task`` key, else ``--task``, else ``tts`` with a transcript and the
checkpoint's first caption task without one; so a file can mix TTA, TTM and TTS requests for a
multi-task DiT. The flags ``--steps``, ``--cfg``, ``--sampler`` and ``--schedule`` change the
checkpoint's :class:`~lodit.samplers.sample.SamplerConfig`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from lodit.conditioning.tasks import TASKS
from lodit.dit.generator import MAX_SECONDS, MAX_STEPS, Generator
from lodit.dit.prompts import MAX_BATCH, read_prompts_file, sample_to_folder
from lodit.errors import LoditError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="DiT run folder or checkpoint folder (from lodit train-dit)"
    )
    parser.add_argument("--prompt", action="append", default=[], help="caption (repeatable)")
    parser.add_argument(
        "--prompts-file",
        help="one caption per line, or JSONL with prompt/transcript/seconds/task/reference_audio/reference_transcript",
    )
    parser.add_argument(
        "--transcript", action="append", default=[], help="TTS: text to speak (once, or once per prompt)"
    )
    parser.add_argument("--reference-audio", action="append", default=[], help="TTS: a recording of the voice to use")
    parser.add_argument(
        "--reference-transcript", action="append", default=[], help="TTS: what the reference recording says"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="length of each generated clip (default: the checkpoint's, or the speaking rate for TTS)",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="task of every request without its own (prompts file 'task' key); "
        "default: tts with a transcript, else the checkpoint's first caption task",
    )
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
    sampling = generator.config.sampling.with_changes(steps=args.steps, cfg=args.cfg, sampler=args.sampler,
                                                      schedule=args.schedule)
    summary = sample_to_folder(generator, requests, args.out, sampling=sampling, seed=args.seed,
                               batch_size=args.batch_size, negative_prompt=args.negative_prompt, task=args.task,
                               use_ema=not args.no_ema)
    produced = sum(s["seconds"] for s in summary["samples"])
    count, rtf = len(summary["samples"]), summary["rtf"]
    print(f"wrote {count} files to {Path(args.out)} ({produced:.1f} s of audio, RTF {rtf:.3f})")
    return 0
