"""``lodit make-dataset``: generate the built-in captioned demo audio (sounds, music, speech).

The work is done by :mod:`lodit.data.synthetic`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.data.synthetic import DEFAULT_COUNTS, make_demo_dataset, parse_counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write audio/, manifest.jsonl and dataset.json into")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    default = ",".join(f"{k}={v}" for k, v in DEFAULT_COUNTS.items())
    parser.add_argument("--counts", help=f"clips per domain, e.g. {default} (the default); beeps=N adds N "
                        "sound clips that are all counted beeps (for teaching or judging count and pitch)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length in seconds (default 4)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="default 16000")


def run(args: argparse.Namespace) -> int:
    counts = DEFAULT_COUNTS if args.counts is None else parse_counts(args.counts)
    manifest = make_demo_dataset(
        args.out,
        n_audio=counts["audio"],
        n_music=counts["music"],
        n_speech=counts["speech"],
        n_beeps=counts["beeps"],
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        require_speech=args.counts is not None and counts["speech"] > 0,
    )
    with open(manifest, encoding="utf-8") as handle:
        n_rows = sum(1 for _ in handle)
    print(f"wrote {manifest} with {n_rows} clips")
    return 0
