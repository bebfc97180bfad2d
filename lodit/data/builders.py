"""Dataset builders: turn audio the user already has on disk, in a known layout, into manifest rows.

Each builder is registered in :data:`LAYOUTS` under its layout name and called as
``build(source, **options)``. It yields ``(where, row_or_reason)`` pairs: ``where`` says where the
record came from (``metadata.csv line 12``, ``speaker1/clip.wav``, ``as.json entry 3``) and the
second item is either a :class:`~lodit.data.manifest.ManifestRow` (audio path absolute) or the
reason the record is unusable (missing audio file, empty caption, ...), so the caller reports it
instead of crashing. Problems with the source as a whole (missing folder, a CSV without its
columns) raise :class:`~lodit.errors.LoditError` at once.

Layouts: ``folder`` (audio files with same-name ``.txt``/``.json`` sidecars), ``libritts``,
``audiocaps``, ``wavcaps``, ``musiccaps`` and ``esc50``. Writing the manifest is
:mod:`lodit.data.prepare`'s job.
"""

from __future__ import annotations

import ast
import csv
import os
import string
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lodit.data.audio import audio_info
from lodit.data.manifest import DOMAINS, ROW_FIELDS, ManifestRow, RowError
from lodit.errors import LoditError
from lodit.files import InvalidJSON, read_json
from lodit.registry import Registry

BuildResult = tuple[str, "ManifestRow | str"]
Builder = Callable[..., Iterator[BuildResult]]

LAYOUTS: Registry[Builder] = Registry("dataset layout")

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})

AUDIOCAPS_CLIP_SECONDS = 10.0  # every AudioCaps caption describes 10 s from start_time


def build_rows(layout: str, source: str | os.PathLike, **options: Any) -> Iterator[BuildResult]:
    """Run the builder registered for ``layout`` on ``source``."""
    return LAYOUTS.get(layout)(Path(source), **options)


# --------------------------------------------------------------------------- folder


@LAYOUTS.register("folder")
def build_folder(source: Path, *, text_field: str = "caption", domain: str | None = None) -> Iterator[BuildResult]:
    """Audio files under ``source`` (recursively, sorted). A same-name ``.txt`` sidecar gives the
    caption (or the transcript with ``text_field="transcript"``); a same-name ``.json`` sidecar
    gives any manifest fields except ``audio`` and wins over the ``.txt`` and over ``domain``."""
    source = _require_dir(source, "folder")
    if text_field not in ("caption", "transcript"):
        raise LoditError(f"text_field must be 'caption' or 'transcript', got {text_field!r}")
    _check_domain(domain)
    for path in _audio_files(source):
        rel = path.relative_to(source)
        yield _attempt(rel.as_posix(), _folder_row, path, rel, text_field, domain)


def _folder_row(path: Path, rel: Path, text_field: str, domain: str | None) -> ManifestRow:
    fields: dict[str, Any] = {"audio": str(path), "id": rel.with_suffix("").as_posix()}
    if domain is not None:
        fields["domain"] = domain
    text_path = path.with_suffix(".txt")
    if text_path.is_file():
        fields[text_field] = _read_text(text_path)
    json_path = path.with_suffix(".json")
    if json_path.is_file():
        sidecar = _read_json(json_path)
        if not isinstance(sidecar, dict):
            raise RowError(f"{json_path.name} must hold a JSON object of manifest fields")
        if "audio" in sidecar:
            raise RowError(f"{json_path.name} sets 'audio'; the sidecar's audio is the file beside it")
        unknown = sorted(set(sidecar) - set(ROW_FIELDS))
        if unknown:
            raise RowError(f"{json_path.name}: unknown field {unknown[0]!r} (known: {', '.join(ROW_FIELDS)})")
        fields.update(sidecar)
    fields.setdefault("duration", _duration(path))
    return ManifestRow.from_dict(fields)


# --------------------------------------------------------------------------- LibriTTS


@LAYOUTS.register("libritts")
def build_libritts(source: Path) -> Iterator[BuildResult]:
    """LibriTTS / LibriTTS-R: ``<split>/<speaker>/<chapter>/<utt>.wav`` with ``<utt>.normalized.txt``
    (or, failing that, ``<utt>.original.txt``). ``source`` is the corpus root or one split."""
    source = _require_dir(source, "libritts")
    for path in _audio_files(source, extensions=(".wav",)):
        yield _attempt(path.relative_to(source).as_posix(), _libritts_row, path)


def _libritts_row(path: Path) -> ManifestRow:
    utterance = path.stem
    chapter, speaker = path.parent.name, path.parent.parent.name
    if not utterance.startswith(f"{speaker}_{chapter}_"):
        raise RowError("not in the LibriTTS layout <speaker>/<chapter>/<speaker>_<chapter>_<n>_<n>.wav")
    for suffix in (".normalized.txt", ".original.txt"):
        text_path = path.with_name(utterance + suffix)
        if text_path.is_file():
            transcript = _read_text(text_path)
            break
    else:
        raise RowError(f"no transcript ({utterance}.normalized.txt or {utterance}.original.txt)")
    return ManifestRow(
        audio=str(path),
        transcript=transcript,
        domain="speech",
        speaker=speaker,
        duration=_duration(path),
        labels={"chapter": chapter},
        id=utterance,
    )


# --------------------------------------------------------------------------- AudioCaps


AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


@LAYOUTS.register("audiocaps")
def build_audiocaps(
    source: Path,
    *,
    audio_dir: str | os.PathLike | None = None,
    patterns: Sequence[str] = ("{youtube_id}.wav", "{audiocap_id}.wav"),
    full_track: bool = False,
) -> Iterator[BuildResult]:
    """An AudioCaps CSV (``audiocap_id,youtube_id,start_time,caption``). Audio is looked up in
    ``audio_dir`` (default: the CSV's folder) by the first of ``patterns`` that names an existing
    file. ``full_track``: the files are whole videos, so read 10 s from ``start_time``."""
    folder = _audio_folder(source, audio_dir)
    for where, record in _csv_records(source, AUDIOCAPS_COLUMNS, "an AudioCaps CSV", patterns):
        yield _attempt(where, _audiocaps_row, record, folder, patterns, full_track)


def _audiocaps_row(record: dict, folder: Path, patterns: Sequence[str], full_track: bool) -> ManifestRow:
    start = _number(record, "start_time")
    path = _find_audio(folder, patterns, record)
    offset, duration = _segment(path, start, start + AUDIOCAPS_CLIP_SECONDS, full_track)
    return ManifestRow(
        audio=str(path),
        caption=_text(record, "caption"),
        domain="audio",
        duration=duration,
        offset=offset,
        labels={"youtube_id": record["youtube_id"], "start_time": start},
        id=record["audiocap_id"],
    )


# --------------------------------------------------------------------------- WavCaps


@LAYOUTS.register("wavcaps")
def build_wavcaps(
    source: Path,
    *,
    audio_dir: str | os.PathLike | None = None,
    patterns: Sequence[str] = ("{audio}", "{id}", "{id}.flac", "{id}.wav"),
) -> Iterator[BuildResult]:
    """A WavCaps JSON file (``{"data": [{"id": ..., "caption": ..., "audio": ..., ...}]}``).

    The released JSONs hold a placeholder in ``audio``; the processed files are usually named
    after ``id``, hence the default patterns (fields an entry lacks are skipped).
    """
    folder = _audio_folder(source, audio_dir)
    _check_patterns(patterns, None, str(source))
    document = read_json(source, hint="is it a WavCaps metadata file?")
    entries = document.get("data") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise LoditError(f'{source}: expected WavCaps JSON {{"data": [...]}} (a list of entries)')
    for index, entry in enumerate(entries, start=1):
        yield _attempt(f"{source.name} entry {index}", _wavcaps_row, entry, folder, patterns)


def _wavcaps_row(entry: Any, folder: Path, patterns: Sequence[str]) -> ManifestRow:
    if not isinstance(entry, dict):
        raise RowError("an entry must be a JSON object")
    fields = {key: str(value) for key, value in entry.items() if isinstance(value, (str, int, float))}
    if "id" not in fields and "audio" not in fields:
        raise RowError("entry has neither 'id' nor 'audio'")
    path = _find_audio(folder, patterns, fields)
    return ManifestRow(
        audio=str(path),
        caption=_text(entry, "caption"),
        domain="audio",
        duration=_duration(path),
        id=fields.get("id", path.stem),
    )


# --------------------------------------------------------------------------- MusicCaps


MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "caption")


@LAYOUTS.register("musiccaps")
def build_musiccaps(
    source: Path,
    *,
    audio_dir: str | os.PathLike | None = None,
    patterns: Sequence[str] = ("{ytid}.wav",),
    full_track: bool = False,
) -> Iterator[BuildResult]:
    """The MusicCaps CSV (``ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,...``).
    ``full_track``: the files are whole tracks, so read ``start_s``..``end_s`` from them;
    otherwise each file is the 10 s clip itself."""
    folder = _audio_folder(source, audio_dir)
    for where, record in _csv_records(source, MUSICCAPS_COLUMNS, "the MusicCaps CSV", patterns):
        yield _attempt(where, _musiccaps_row, record, folder, patterns, full_track)


def _musiccaps_row(record: dict, folder: Path, patterns: Sequence[str], full_track: bool) -> ManifestRow:
    start, end = _number(record, "start_s"), _number(record, "end_s")
    if end <= start:
        raise RowError(f"end_s ({end}) must be after start_s ({start})")
    path = _find_audio(folder, patterns, record)
    offset, duration = _segment(path, start, end, full_track)
    labels: dict[str, Any] = {"ytid": record["ytid"], "start_s": start, "end_s": end}
    if record.get("aspect_list"):
        labels["aspect_list"] = _literal_list(record["aspect_list"])
    return ManifestRow(
        audio=str(path),
        caption=_text(record, "caption"),
        domain="music",
        duration=duration,
        offset=offset,
        labels=labels,
        id=record["ytid"],
    )


# --------------------------------------------------------------------------- ESC-50


ESC50_COLUMNS = ("filename", "fold", "target", "category")


@LAYOUTS.register("esc50")
def build_esc50(source: Path, *, audio_dir: str | os.PathLike | None = None) -> Iterator[BuildResult]:
    """ESC-50: ``meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``) and the
    clips in ``audio/`` (or ``audio_dir``). The caption is the category in words."""
    source = _require_dir(source, "esc50")
    csv_path = source / "meta" / "esc50.csv"
    if not csv_path.is_file():
        raise LoditError(f"{source}: no meta/esc50.csv; point at the ESC-50 root folder")
    folder = Path(audio_dir) if audio_dir is not None else source / "audio"
    _require_dir(folder, "esc50 audio")
    for where, record in _csv_records(csv_path, ESC50_COLUMNS, "meta/esc50.csv"):
        yield _attempt(where, _esc50_row, record, folder)


def _esc50_row(record: dict, folder: Path) -> ManifestRow:
    category = _text(record, "category")
    path = _find_audio(folder, ("{filename}",), record)
    return ManifestRow(
        audio=str(path),
        caption=category.replace("_", " "),
        domain="audio",
        duration=_duration(path),
        labels={"category": category, "target": int(_number(record, "target")), "fold": int(_number(record, "fold"))},
        id=Path(record["filename"]).stem,
    )


# --------------------------------------------------------------------------- shared helpers


def _attempt(where: str, make_row: Callable[..., ManifestRow], *args: Any) -> BuildResult:
    """``(where, make_row(*args))``, or ``(where, reason)`` when the record is unusable."""
    try:
        return where, make_row(*args)
    except RowError as exc:
        return where, str(exc)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LoditError(f"{path}: not a folder; the {what} layout needs the dataset's folder")
    return path


def _audio_folder(source: Path, audio_dir: str | os.PathLike | None) -> Path:
    if not source.is_file():
        raise LoditError(f"{source}: metadata file not found")
    folder = Path(audio_dir) if audio_dir is not None else source.parent
    if not folder.is_dir():
        raise LoditError(f"{folder}: audio folder not found; pass --audio-dir")
    return folder


def _check_domain(domain: str | None) -> None:
    if domain is not None and domain not in DOMAINS:
        raise LoditError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")


def _audio_files(source: Path, extensions: Sequence[str] | frozenset = AUDIO_EXTENSIONS) -> Iterator[Path]:
    """Audio files under ``source`` in a stable order; hidden files (temporaries) are left out."""
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                yield Path(dirpath) / name


def _csv_records(
    path: Path, required: Sequence[str], what: str, patterns: Sequence[str] = ()
) -> Iterator[tuple[str, dict]]:
    """``("<file> line N", record)`` for every data row of a CSV with the ``required`` columns;
    filename ``patterns`` are checked against the header before the first row."""
    if not path.is_file():
        raise LoditError(f"{path}: CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            raise LoditError(
                f"{path}: missing column(s) {', '.join(missing)}; {what} has columns {', '.join(required)}, ..."
            )
        if patterns:
            _check_patterns(patterns, header, str(path))
        reader.fieldnames = header
        first_line = reader.line_num + 1
        for record in reader:
            yield f"{path.name} line {first_line}", record
            first_line = reader.line_num + 1


def _check_patterns(patterns: Sequence[str], columns: Sequence[str] | None, where: str) -> None:
    """Patterns are ``str.format`` templates over a record's fields, e.g. ``{ytid}.wav``; with
    ``columns`` given, every field a pattern names must be one of them."""
    if isinstance(patterns, str) or not patterns:
        raise LoditError(f"{where}: filename patterns must be a non-empty list of templates")
    for pattern in patterns:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
        except ValueError as exc:
            raise LoditError(f"{where}: bad filename pattern {pattern!r} ({exc})") from None
        for name in names:
            if not name.isidentifier():
                raise LoditError(f"{where}: pattern {pattern!r} must name fields, like {{id}}.wav")
            if columns is not None and name not in columns:
                raise LoditError(
                    f"{where}: pattern {pattern!r} uses {{{name}}}, which is not a column "
                    f"(columns: {', '.join(columns)})"
                )


def _find_audio(folder: Path, patterns: Sequence[str], fields: dict) -> Path:
    tried = []
    for pattern in patterns:
        try:
            name = pattern.format_map({k: v for k, v in fields.items() if v is not None})
        except (KeyError, IndexError):
            continue  # this record lacks a field the pattern needs; try the next pattern
        if not name:
            continue
        candidate = folder / name
        if candidate.is_file():
            return candidate
        tried.append(name)
    if not tried:
        raise RowError(f"no filename pattern applies ({', '.join(patterns)})")
    raise RowError(f"audio file not found: {' or '.join(tried)} in {folder}")


def _duration(path: Path) -> float:
    try:
        rate, frames, _ = audio_info(path)
    except LoditError as exc:
        raise RowError(str(exc)) from None
    if frames <= 0:
        raise RowError(f"{path}: audio file is empty")
    return frames / rate


def _segment(path: Path, start: float, end: float, full_track: bool) -> tuple[float, float]:
    """``(offset, duration)``: the annotated segment of a full track, or the whole (clip) file."""
    length = _duration(path)
    if not full_track:
        return 0.0, length
    if start >= length:
        raise RowError(
            f"segment {start:g}-{end:g} s starts after the end of {path.name} ({length:.2f} s); "
            "are the files already trimmed clips? then leave out --full-track"
        )
    return start, min(end, length) - start


def _text(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"empty {name}")
    return " ".join(value.split())


def _number(record: dict, name: str) -> float:
    value = record.get(name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RowError(f"{name} must be a number, got {value!r}") from None


def _literal_list(text: str) -> list | str:
    """MusicCaps writes ``aspect_list`` as a Python list literal; keep the text if it isn't one."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, list) else text


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RowError(f"{path.name} is not UTF-8 text") from None
    text = " ".join(text.split())
    if not text:
        raise RowError(f"{path.name} is empty")
    return text


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except InvalidJSON as exc:
        raise RowError(f"{path.name} is not valid JSON ({exc.reason})") from None
