"""``lodit prepare``: build a manifest (JSONL) from a folder or a public dataset layout.

The work is done by :mod:`lodit.data.prepare`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.data.builders import LAYOUTS
from lodit.data.manifest import DOMAINS
from lodit.data.prepare import OPTION_FLAGS, prepare_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("layout", help=f"dataset layout: {', '.join(LAYOUTS.names())}")
    parser.add_argument(
        "source",
        help="the dataset: its folder (folder, libritts, esc50) or metadata (audiocaps/musiccaps CSV, wavcaps JSON)",
    )
    parser.add_argument("--out", required=True, help="manifest to write (JSON Lines), e.g. data/manifest.jsonl")
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="a bad row stops the build (fail, default) or is reported and left out (skip)",
    )
    parser.add_argument("--audio-dir", help="folder holding the audio (audiocaps, wavcaps, musiccaps, esc50)")
    parser.add_argument(
        "--text-field",
        choices=("caption", "transcript"),
        help="folder layout: what a .txt sidecar holds (default caption)",
    )
    parser.add_argument(
        "--domain", choices=DOMAINS, help="folder layout: domain of rows without a .json sidecar saying so"
    )
    parser.add_argument(
        "--pattern",
        action="append",
        dest="patterns",
        metavar="TEMPLATE",
        help="audio filename template over the metadata's fields, e.g. '{ytid}.wav' (repeat to try several)",
    )
    parser.add_argument(
        "--full-track",
        action="store_true",
        default=None,
        help="audiocaps/musiccaps: the audio files are whole tracks; read the annotated segment from them",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}
    report = prepare_manifest(
        args.layout, args.source, args.out, on_error=args.on_error, progress=not args.no_progress, **options
    )
    print(f"wrote {args.out}: {report.summary()}")
    return 0
