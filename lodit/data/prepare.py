"""``lodit prepare``: build a manifest (JSON Lines) from a folder or a public dataset layout.

Runs a builder from :mod:`lodit.data.builders`, makes audio paths relative to the manifest's folder
where the audio lies inside it, and writes the manifest atomically: a failure (a bad row with
``--on-error fail``, no usable rows at all, an interruption) never leaves a partial manifest at
the target path. Prints ``kept N rows, dropped M (where: reason; ...)``.
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodit.data.builders import LAYOUTS
from lodit.data.manifest import DOMAINS, SKIP_HINT, ManifestReport, OnError, portable_audio_path, write_manifest
from lodit.errors import LoditError

# builder keyword -> the command-line flag that sets it (for errors about options a layout lacks)
OPTION_FLAGS = {
    "audio_dir": "--audio-dir",
    "text_field": "--text-field",
    "domain": "--domain",
    "patterns": "--pattern",
    "full_track": "--full-track",
}


def prepare_manifest(
    layout: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    on_error: OnError = "fail",
    progress: bool = False,
    **options: Any,
) -> ManifestReport:
    """Build the ``layout`` manifest of ``source`` into ``out``; returns the kept/dropped report.

    ``options`` go to the builder (``audio_dir``, ``text_field``, ``domain``, ``patterns``,
    ``full_track``: whichever the layout takes). With ``on_error="fail"`` the first bad record
    raises :class:`LoditError` naming where it is; with ``"skip"`` it is counted in the report.
    """
    if on_error not in ("fail", "skip"):
        raise LoditError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    builder = LAYOUTS.get(layout)
    _check_options(layout, builder, options)
    source, out = Path(source), Path(out)
    if not source.exists():
        raise LoditError(f"{source}: not found; give the dataset's folder or metadata file")
    if out.is_dir():
        raise LoditError(f"{out}: is a folder; --out names the manifest file to write (e.g. manifest.jsonl)")
    report = ManifestReport(str(source))
    manifest_dir = out.parent

    def kept_rows():
        records = tqdm(
            builder(source, **options), desc=f"prepare {layout}", unit=" clips", disable=None if progress else True
        )
        for where, row in records:
            if isinstance(row, str):
                if on_error == "fail":
                    raise LoditError(f"{where}: {row}; fix it or {SKIP_HINT}")
                report.drop(where, row)
                continue
            row.audio = portable_audio_path(row.audio, manifest_dir)
            report.kept += 1
            yield row
        if report.kept == 0:  # raising here discards the temporary manifest: nothing is written
            raise LoditError(f"{source}: no usable {layout} rows ({report.summary()}); is this the right layout?")

    write_manifest(out, kept_rows())
    return report


def _check_options(layout: str, builder: Any, options: dict[str, Any]) -> None:
    accepted = set(inspect.signature(builder).parameters) - {"source"}
    for name in options:
        if name not in accepted:
            flag = OPTION_FLAGS.get(name, name)
            takes = ", ".join(OPTION_FLAGS.get(a, a) for a in sorted(accepted)) or "no options"
            raise LoditError(f"{flag} does not apply to the {layout} layout (it takes: {takes})")


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
