"""``lodit prepare``: build a manifest (JSON Lines) from a folder or a public dataset layout.

Runs a builder from :mod:`lodit.data.builders`, makes audio paths relative to the manifest's folder
where the audio lies inside it, and writes the manifest atomically: a failure (a bad row with
``--on-error fail``, no usable rows at all, an interruption) never leaves a partial manifest at
the target path. Prints ``kept N rows, dropped M (where: reason; ...)``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodit.data.builders import LAYOUTS
from lodit.data.manifest import SKIP_HINT, ManifestReport, OnError, portable_audio_path, write_manifest
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
