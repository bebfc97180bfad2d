"""How well the adherence estimators (lodit.eval.adherence) recover the demo dataset's own labels.

Generates the built-in demo dataset for each seed (the reference clips, whose caption attributes
are known), estimates every attribute its caption states back from the audio, and prints per
attribute: the estimator's accuracy (and the tolerant one for ordinal attributes), the chance level
of guessing with the label frequencies, N and the seeds.

    python scripts/adherence_check.py                      # 72 clips per domain, seeds 0 and 1
    python scripts/adherence_check.py --counts audio=120,music=120,speech=60 --seeds 0 1 2 --json out.json
    python scripts/adherence_check.py --snr-db 20          # the same clips with white noise added
    python scripts/adherence_check.py --counts beeps=24 --seconds 2 --tokenizer RUN/final
                                                           # the clips after a tokenizer's round trip

An attribute under 95 % here is flagged by the evaluation reports (lodit.eval.adherence.TRUSTED_ACCURACY).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from lodit.data.synthetic import make_demo_dataset, parse_counts
from lodit.eval.adherence import SAMPLE_RATE, TRUSTED_ACCURACY, matches, reference_scores


def add_noise(wav: np.ndarray, snr_db: float) -> np.ndarray:
    """``wav`` plus white noise ``snr_db`` below its mean power (seeded by the clip, so runs repeat)."""
    rng = np.random.default_rng(int(np.abs(wav[:1000]).sum() * 1e6) % 2**32)
    power = float(np.mean(wav**2))
    return wav + rng.standard_normal(len(wav)) * np.sqrt(power * 10.0 ** (-snr_db / 10.0))


def round_trip(wav: np.ndarray, tokenizer) -> np.ndarray:
    """``wav`` encoded and decoded by ``tokenizer``: what a generator over its latents can at best give back."""
    import torch

    with torch.no_grad():
        audio = torch.from_numpy(wav.astype(np.float32))[None, None]  # (1, 1, S)
        return tokenizer.decode(tokenizer.encode(audio))[0, 0, : len(wav)].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="audio=72,music=72,speech=72", help="clips per domain (default 72 each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="dataset seeds (default 0 1)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4, as the demo)")
    parser.add_argument("--json", help="also write the table as JSON here")
    parser.add_argument("--show-errors", action="store_true", help="print every clip an estimator got wrong")
    parser.add_argument("--snr-db", type=float,
                        help="add white noise at this signal-to-noise ratio to every clip first (robustness check)")
    parser.add_argument("--tokenizer", help="a tokenizer folder: judge each clip after its round trip through it")
    args = parser.parse_args(argv)
    if args.tokenizer and args.snr_db is not None:
        parser.error("--tokenizer and --snr-db each change the clips; give one of them")
    counts = parse_counts(args.counts)
    degrade = None if args.snr_db is None else partial(add_noise, snr_db=args.snr_db)
    if args.tokenizer:
        from lodit.latent_tokenizer.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(args.tokenizer).eval()
        if tokenizer.sample_rate != SAMPLE_RATE:
            parser.error(f"--tokenizer works at {tokenizer.sample_rate} Hz; the estimators read {SAMPLE_RATE} Hz")
        degrade = partial(round_trip, tokenizer=tokenizer)
    started = time.perf_counter()
    manifests = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            manifests.append(
                make_demo_dataset(
                    Path(tmp) / f"seed-{seed}",
                    n_audio=counts["audio"],
                    n_music=counts["music"],
                    n_speech=counts["speech"],
                    n_beeps=counts["beeps"],
                    seconds=args.seconds,
                    seed=seed,
                )
            )
        scores, items = reference_scores(manifests, degrade)
    seconds = time.perf_counter() - started
    noise = "" if args.snr_db is None else f", white noise added at {args.snr_db:g} dB SNR"
    noise += f", through the tokenizer {args.tokenizer}" if args.tokenizer else ""
    print(f"estimator accuracy on the demo dataset's own clips: seeds {' '.join(map(str, args.seeds))}, "
          f"{args.counts} per seed, {args.seconds:g} s clips{noise} ({seconds:.0f} s)")
    print(f"{'attribute':<11} {'N':>4} {'accuracy':>9} {'tolerant':>9} {'chance':>7} {'majority':>8}  flag")
    for row in scores:
        tolerant = f"{row['accuracy_tolerant']:.3f}" if "accuracy_tolerant" in row else "-"
        flag = "" if row["accuracy"] >= TRUSTED_ACCURACY else f"below {TRUSTED_ACCURACY:.0%}"
        print(f"{row['name']:<11} {row['n']:>4} {row['accuracy']:>9.3f} {tolerant:>9} {row['chance']:>7.3f} "
              f"{row['majority']:>8.3f}  {flag}")
    if args.show_errors:
        for item in items:
            wrong = {k: (v, item["estimated"][k]) for k, v in item["expected"].items()
                     if not matches(k, item["estimated"][k], v)}
            if wrong:
                print(item["clip"], wrong)
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "counts": counts, "seconds": args.seconds,
                                               "attributes": scores}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
