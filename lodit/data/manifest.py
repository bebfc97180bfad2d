"""Manifests: JSON Lines files with one audio clip per line, read streaming and validated row by row.

A row names its ``audio`` file (relative to the manifest's folder, or absolute) and optionally its
``caption``, ``transcript``, ``domain`` (speech | music | audio), ``speaker``, ``duration`` and
``offset`` (seconds), free-form ``labels`` and an ``id``. A bad row either stops the read with a
one-line :class:`~lodit.errors.LoditError` naming the file and line (``on_error="fail"``) or is
dropped and recorded in a :class:`ManifestReport` (``on_error="skip"``); it is never dropped silently.

This module owns the row schema, reading, validation, reports and atomic writing. Building rows
from dataset layouts lives in :mod:`lodit.data.builders`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from lodit.errors import LoditError
from lodit.files import write_atomically

logger = logging.getLogger(__name__)

Domain = Literal["speech", "music", "audio"]
DOMAINS: tuple[str, ...] = get_args(Domain)
OnError = Literal["fail", "skip"]
# How every command that reads a manifest spells "leave bad rows out" (the trainers map the option
# to their data.on_error key).
SKIP_HINT = "use --on-error skip"
_BOM = b"\xef\xbb\xbf"


class RowError(ValueError):
    """Why one manifest row (or one source record of a builder) is unusable; its text is the reason."""


@dataclass
class ManifestRow:
    """One clip. ``audio`` is relative to the manifest's folder or absolute; times are seconds."""

    audio: str
    caption: str | None = None
    transcript: str | None = None
    domain: Domain | None = None
    speaker: str | None = None
    duration: float | None = None
    offset: float = 0.0
    labels: dict | list | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this row: unset fields (``None``, zero offset) are left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "offset" and value == 0.0):
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, mapping: Any) -> ManifestRow:
        """Validate a parsed JSON value as a row; raises :class:`RowError` with the reason."""
        if not isinstance(mapping, dict):
            raise RowError(f"a row must be a JSON object, got {_json_type(mapping)}")
        unknown = sorted(set(mapping) - set(ROW_FIELDS))
        if unknown:
            raise RowError(f"unknown field {unknown[0]!r} (known fields: {', '.join(ROW_FIELDS)})")
        audio = mapping.get("audio")
        if audio is None:
            raise RowError("missing 'audio' (every row needs the path of its audio file)")
        if not isinstance(audio, str) or not audio.strip():
            raise RowError(f"'audio' must be a non-empty string, got {_json_type(audio)}")
        for name in ("caption", "transcript", "speaker", "id"):
            value = mapping.get(name)
            if value is not None and not isinstance(value, str):
                raise RowError(f"{name!r} must be a string, got {_json_type(value)}")
        domain = mapping.get("domain")
        if domain is not None and domain not in DOMAINS:
            raise RowError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
        duration = _seconds(mapping, "duration")
        if duration is not None and duration <= 0:
            raise RowError(f"'duration' must be positive, got {duration}")
        offset = _seconds(mapping, "offset")
        if offset is not None and offset < 0:
            raise RowError(f"'offset' must not be negative, got {offset}")
        labels = mapping.get("labels")
        if labels is not None and not isinstance(labels, (dict, list)):
            raise RowError(f"'labels' must be an object or a list, got {_json_type(labels)}")
        return cls(
            audio=audio,
            caption=mapping.get("caption"),
            transcript=mapping.get("transcript"),
            domain=domain,
            speaker=mapping.get("speaker"),
            duration=duration,
            offset=0.0 if offset is None else offset,
            labels=labels,
            id=mapping.get("id"),
        )


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow))


@dataclass
class DroppedRow:
    """A row left out: where it came from (``line 7``, a file name, ...) and why."""

    where: str
    reason: str


@dataclass
class ManifestReport:
    """Kept/dropped counts of a read or a build, with the reason for every dropped row."""

    source: str
    kept: int = 0
    dropped: list[DroppedRow] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    def drop(self, where: str, reason: str) -> None:
        self.dropped.append(DroppedRow(where, reason))

    def summary(self, max_reasons: int = 5) -> str:
        """``kept N rows, dropped M (line 12: reason; ...)`` with at most ``max_reasons`` reasons."""
        text = f"kept {self.kept} row{'' if self.kept == 1 else 's'}, dropped {self.n_dropped}"
        if self.dropped:
            shown = "; ".join(f"{d.where}: {d.reason}" for d in self.dropped[:max_reasons])
            more = self.n_dropped - max_reasons
            text += f" ({shown}{f'; and {more} more' if more > 0 else ''})"
        return text

    def __str__(self) -> str:
        return self.summary()


@dataclass
class Manifest:
    """A fully read manifest: its rows (with their line numbers) and the read's report."""

    path: Path
    rows: list[ManifestRow]
    line_numbers: list[int]
    report: ManifestReport

    @property
    def root(self) -> Path:
        """The folder relative audio paths are resolved from."""
        return self.path.parent

    def audio_path(self, row: ManifestRow) -> Path:
        return resolve_audio(row, self.root)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> ManifestRow:
        return self.rows[index]


def resolve_audio(row: ManifestRow, manifest_dir: str | os.PathLike) -> Path:
    """The file a row's ``audio`` names: absolute paths as they are, others from ``manifest_dir``."""
    path = Path(os.path.expanduser(row.audio))
    return path if path.is_absolute() else Path(manifest_dir) / path


def portable_audio_path(audio: str | os.PathLike, manifest_dir: str | os.PathLike) -> str:
    """How a manifest in ``manifest_dir`` should store ``audio``: relative (POSIX) when the file
    lies inside that folder, so manifest and audio can move together; absolute otherwise."""
    audio_abs = Path(os.path.abspath(audio))
    root = Path(os.path.abspath(manifest_dir))
    try:
        return audio_abs.relative_to(root).as_posix()
    except ValueError:
        return str(audio_abs)


def iter_manifest(
    path: str | os.PathLike,
    *,
    on_error: OnError = "fail",
    check_audio: bool = False,
    report: ManifestReport | None = None,
) -> Iterator[tuple[int, ManifestRow]]:
    """Stream ``(line_number, row)`` pairs; memory does not grow with the file.

    Blank lines are not rows. With ``on_error="skip"`` bad rows go into ``report`` (or, when no
    report is given, into a warning each); with ``"fail"`` the first one raises ``LoditError``.
    ``check_audio`` also rejects rows whose audio file does not exist.
    """
    check_on_error(on_error)
    path = check_manifest_path(path)
    warn_each = report is None  # nobody will read a report: say it in the log instead
    if report is None:
        report = ManifestReport(str(path))
    root = path.parent
    with open(path, "rb") as handle:  # bytes, so one badly encoded line is one bad row
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]  # editors on Windows start UTF-8 files with a byte-order mark
            if not raw.strip():
                continue
            try:
                row = parse_row(raw)
                if check_audio and not resolve_audio(row, root).is_file():
                    raise RowError(f"audio file not found: {resolve_audio(row, root)}")
            except RowError as exc:
                where = f"line {line_number}"
                if on_error == "fail":
                    raise LoditError(f"{path} {where}: {exc}; fix the row or {SKIP_HINT}") from None
                report.drop(where, str(exc))
                if warn_each:
                    logger.warning("%s %s dropped: %s", path, where, exc)
                continue
            report.kept += 1
            yield line_number, row


def check_on_error(on_error: Any) -> None:
    """Refuse an ``on_error`` other than ``fail`` or ``skip``."""
    if on_error not in ("fail", "skip"):
        raise LoditError(f"on_error must be 'fail' or 'skip', got {on_error!r}")


def check_manifest_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a manifest file; a missing path or a folder is a LoditError."""
    path = Path(path)
    if path.is_dir():
        raise LoditError(f"{path}: is a folder, not a manifest; give the manifest file "
                         f"(e.g. {path / 'manifest.jsonl'}) or build one with `lodit prepare`")
    if not path.is_file():
        raise LoditError(f"{path}: manifest not found; build one with `lodit prepare`")
    return path


class KeyTracker:
    """Finds rows that reuse another row's clip key (its ``id``, else its ``audio`` path).

    Every consumer of a manifest (training, encoding) names clips by that key, so a repeated key
    is a bad row everywhere: reported with both line numbers, failing or skipped per ``on_error``.
    """

    def __init__(self) -> None:
        self.first_line: dict[str, int] = {}

    def check(self, key: str, line: int) -> None:
        """Remember ``key`` at ``line``; raise :class:`RowError` if an earlier row used it."""
        first = self.first_line.setdefault(key, line)
        if first != line:
            raise RowError(f"clip key {key!r} is used again (first on line {first}); give each row a unique "
                           "'id' (or audio path)")


def parse_row(raw: bytes | str) -> ManifestRow:
    """One JSON Lines line -> a validated row (raises :class:`RowError`)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RowError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    return ManifestRow.from_dict(value)


def read_manifest(path: str | os.PathLike, *, on_error: OnError = "fail", check_audio: bool = False) -> Manifest:
    """Read a whole manifest into memory (see :func:`iter_manifest` for the streaming form).

    Skipped rows are logged as one warning with the report's summary.
    """
    path = Path(path)
    report = ManifestReport(str(path))
    rows: list[ManifestRow] = []
    line_numbers: list[int] = []
    for line_number, row in iter_manifest(path, on_error=on_error, check_audio=check_audio, report=report):
        rows.append(row)
        line_numbers.append(line_number)
    if report.dropped:
        logger.warning("%s: %s", path, report.summary())
    return Manifest(path=path, rows=rows, line_numbers=line_numbers, report=report)


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow | dict]) -> int:
    """Write rows as JSON Lines atomically and return how many were written.

    ``rows`` may be a generator: it is consumed while writing to a temporary file beside ``path``,
    which replaces ``path`` only when every row was written. If the generator (or validation of a
    dict row) raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                try:  # validate objects too, so whatever is written reads back
                    row = ManifestRow.from_dict(row.to_dict() if isinstance(row, ManifestRow) else row)
                except RowError as exc:
                    raise LoditError(f"{path}: row {count + 1} is invalid: {exc}") from None
                handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
                count += 1

    write_atomically(path, write, sync=True)
    return count



def _seconds(mapping: dict, name: str) -> float | None:
    value = mapping.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(f"{name!r} must be a number of seconds, got {_json_type(value)}")
    if not math.isfinite(value):
        raise RowError(f"{name!r} must be a finite number of seconds, got {value}")
    return float(value)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return names.get(type(value), type(value).__name__)
