"""``lodit encode``: a manifest through a tokenizer into a latent cache.

Streams the manifest row by row, reads each clip at the tokenizer's sample rate (mono), encodes
it with :meth:`Tokenizer.encode` (the deterministic path) and writes a
:class:`~lodit.data.latent_cache.LatentCacheWriter` cache whose producer is the tokenizer's
identity plus ``checkpoint`` (the tokenizer folder), so a DiT run can decode its own previews and
refuse latents of another tokenizer. Each clip keeps its ``caption``, ``transcript``, ``domain``,
``speaker``, ``labels``, ``duration`` and ``audio`` (the resolved audio path; ``offset`` too when
the clip starts inside its file).

Batching: clips are read in windows of ``8 * batch_size`` rows and clips of *exactly* the same
length share a batch. Padding would change what the encoder sees near a clip's end (and, for
statistics over time, everywhere), so a cached latent is always ``encode`` of its clip alone (up
to float rounding: batched kernels may sum in another order); fixed-length datasets (the demo
set, AudioCaps, ESC-50) still encode in full batches.
Clips are written in manifest order.

Bad rows (invalid JSON, unknown fields, unreadable or empty audio) are reported by line number and
stop the encode (``--on-error fail``) or are skipped and listed in the summary (``skip``).
An interrupted encode continues with ``--resume``; an existing cache is replaced only with
``--overwrite``.

A tokenizer with a semantic teacher (LoSATok) runs the teacher on every clip. Given the teacher
cache its training filled (``--teacher-cache``, the run's ``data.teacher_cache``), a batch whose
clips are all in it takes their cached features instead: the same numbers (up to float rounding)
without the teacher's pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from lodit.data.audio import load_audio
from lodit.data.dataset import ClipRecord, clip_record
from lodit.data.latent_cache import LatentCache, LatentCacheWriter
from lodit.data.manifest import (
    SKIP_HINT,
    KeyTracker,
    ManifestReport,
    ManifestRow,
    OnError,
    RowError,
    check_manifest_path,
    check_on_error,
    iter_manifest,
    resolve_audio,
)
from lodit.devices import choose_device
from lodit.errors import LoditError
from lodit.latent_tokenizer.losatok import FrozenTeacher
from lodit.latent_tokenizer.teacher_features import cached_teacher_inputs
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.latent_tokenizer.uniaudio import is_uniaudio_folder

WINDOW_BATCHES = 8  # rows read ahead (in batches) to find clips of the same length
MAX_BATCH = 4096  # clips encoded at once; far beyond what any device fits
TEXT_FIELDS = ("caption", "transcript", "domain", "speaker", "labels")


@dataclass
class EncodeSummary:
    """What :func:`encode_manifest` did."""

    cache: Path
    encoded: int  # clips encoded by this call
    resumed: int  # clips already in the cache from an interrupted encode
    frames: int  # frames in the cache
    seconds: float  # audio seconds encoded by this call
    report: ManifestReport  # kept/dropped rows with the reason for each dropped one

    def line(self) -> str:
        resumed = f" ({self.resumed} already there from an interrupted encode)" if self.resumed else ""
        dropped = ""
        if self.report.dropped:
            reasons = "; ".join(f"{d.where}: {d.reason}" for d in self.report.dropped[:5])
            more = f"; and {self.report.n_dropped - 5} more" if self.report.n_dropped > 5 else ""
            dropped = f"; skipped {self.report.n_dropped} bad rows ({reasons}{more})"
        return (f"encoded {self.encoded} clips, {self.seconds:.1f} s of audio{resumed}, into {self.cache} "
                f"({self.frames} frames in total){dropped}")


class FrameEncoder(Protocol):
    """What :func:`encode_with` needs of a model: its input rate and a batch encoder."""

    sample_rate: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...


EncoderInputs = Callable[[Sequence[ClipRecord]], dict[str, torch.Tensor]]  # a batch's clips -> extra encoder inputs


@dataclass
class _Clip:
    line: int
    key: str
    wav: torch.Tensor | None  # (1, S); None while only known to be in the cache already
    fields: dict
    row: ManifestRow


def encode_manifest(
    tokenizer_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    overwrite: bool = False,
    resume: bool = False,
    on_error: OnError = "fail",
    progress: bool = True,
    teacher_cache: str | os.PathLike | None = None,
) -> EncodeSummary:
    """Encode every clip of ``manifest`` with the tokenizer in ``tokenizer_dir`` into the cache ``out``
    (its semantic teacher's features taken from ``teacher_cache`` where they are there)."""
    folder = Path(tokenizer_dir).resolve()
    if is_uniaudio_folder(folder):
        raise LoditError(f"{folder}: a UniAudio-Token folder makes discrete tokens, not latents; use --tokens {folder}")
    tokenizer = Tokenizer.from_pretrained(folder, map_location=choose_device(device, option="--device"))
    producer = {**tokenizer.identity(), "checkpoint": str(folder)}
    inputs = None
    if teacher_cache:
        teacher = getattr(tokenizer.encoder, "teacher", None)
        if not isinstance(teacher, FrozenTeacher):
            raise LoditError(f"--teacher-cache: the tokenizer in {folder} has no semantic teacher; drop the option")
        inputs = cached_teacher_inputs(teacher.get(), teacher_cache, tokenizer.sample_rate)
    return encode_with(tokenizer, producer, manifest, out, batch_size=batch_size, dtype=dtype, overwrite=overwrite,
                       resume=resume, on_error=on_error, progress=progress, encoder_inputs=inputs)


def encode_with(
    encoder: FrameEncoder,
    producer: dict,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    dtype: str = "float32",
    overwrite: bool = False,
    resume: bool = False,
    on_error: OnError = "fail",
    progress: bool = True,
    encoder_inputs: EncoderInputs | None = None,
) -> EncodeSummary:
    """Encode every clip of ``manifest`` with ``encoder`` (anything with ``sample_rate`` and
    ``encode(wav (B, 1, S)) -> (B, T, D)``, e.g. a :class:`Tokenizer`) into the cache ``out``,
    recording ``producer`` as the cache's producer. ``encoder_inputs`` gives each batch's extra
    keyword inputs of ``encode`` from its clips' records (an encoder whose ``encode`` takes them,
    such as a :class:`Tokenizer`)."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise LoditError(f"--batch-size must be between 1 and {MAX_BATCH}, got {batch_size}")
    check_on_error(on_error)
    manifest = check_manifest_path(manifest)
    tokenizer = encoder
    report = ManifestReport(str(manifest))
    if resume and not overwrite and (Path(out) / "meta.json").is_file():
        done = LatentCache(out)  # a killed encode may have finished its cache just before it died
        if done.producer == json.loads(json.dumps(producer)) and done.meta.get("dtype") == dtype:
            return EncodeSummary(Path(out), 0, len(done), int(done.meta["num_frames"]), 0.0, report)
    writer = LatentCacheWriter(out, producer=producer, dtype=dtype, overwrite=overwrite, resume=resume)
    resumed = writer.num_clips
    try:
        with writer:
            encoded, seconds = _encode_rows(manifest, tokenizer, writer, batch_size, on_error, report, progress,
                                            encoder_inputs)
            if writer.num_clips == 0:
                writer.discard()  # nothing worth resuming
                raise LoditError(f"{manifest}: no clip could be encoded ({report.summary()}); check the manifest")
    except LoditError as exc:
        raise LoditError(f"{exc}{_kept_note(writer)}") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_kept_note(writer).lstrip("; ") or "nothing was encoded yet") from None
    return EncodeSummary(Path(out), encoded, resumed, writer.num_frames, seconds, report)


def _encode_rows(manifest: Path, tokenizer: FrameEncoder, writer: LatentCacheWriter, batch_size: int,
                 on_error: OnError, report: ManifestReport, progress: bool,
                 encoder_inputs: EncoderInputs | None) -> tuple[int, float]:
    """Encode the manifest's clips into ``writer``; returns the clips and audio seconds encoded now.

    Windows are runs of ``WINDOW_BATCHES * batch_size`` usable clips in manifest order, whether or
    not an interrupted encode already wrote them, so a resumed encode batches every clip exactly as
    an uninterrupted one would (batching changes float rounding). A window that an interrupted
    encode finished is skipped without reading its audio; one it finished in part is read again
    whole, and only its missing clips are written.
    """
    encoded = 0
    seconds = 0.0
    keys = KeyTracker()
    bar = tqdm(total=_count_lines(manifest), desc="encode", unit=" clips", disable=None if progress else True)
    window: list[_Clip] = []
    for line, row in iter_manifest(manifest, on_error=on_error, report=report):
        bar.update(1)
        key = row.id or row.audio
        try:
            keys.check(key, line)
        except RowError as exc:
            _bad_row(manifest, line, exc, on_error, report)
            continue
        if key in writer:
            window.append(_Clip(line, key, None, {}, row))  # written by the interrupted encode
        else:
            clip = _read_clip(line, key, row, manifest, tokenizer.sample_rate, on_error, report)
            if clip is not None:
                window.append(clip)
        if len(window) >= WINDOW_BATCHES * batch_size:
            encoded, seconds = _flush(window, tokenizer, writer, batch_size, encoded, seconds, manifest,
                                      encoder_inputs)
    encoded, seconds = _flush(window, tokenizer, writer, batch_size, encoded, seconds, manifest, encoder_inputs)
    bar.update(bar.total - bar.n)  # rows dropped while reading the manifest never reached the loop
    bar.close()
    return encoded, seconds


def _kept_note(writer: LatentCacheWriter) -> str:
    """What an interrupted or failed encode leaves behind, and what to do with it."""
    if writer.num_clips == 0 or not writer.tmp.is_dir():
        writer.discard()  # nothing worth resuming: leave no folder behind
        return ""
    return (f"; the {writer.num_clips} clips encoded so far are kept in {writer.tmp}: run the same command with "
            "--resume to continue from them, or delete that folder")


def _bad_row(manifest: Path, line: int, exc: Exception, on_error: OnError, report: ManifestReport) -> None:
    """Fail on a row that iter_manifest accepted but that can't be used, or drop it into the report."""
    if on_error == "fail":
        raise LoditError(f"{manifest} line {line}: {exc}; fix the row or {SKIP_HINT}") from None
    report.kept -= 1  # iter_manifest counted the row as kept; its audio (or key) says otherwise
    report.drop(f"line {line}", str(exc))


def _count_lines(path: Path) -> int:
    """Non-blank lines (rows, good or bad) for the progress bar's total; cheap next to encoding."""
    with open(path, "rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def _read_clip(line: int, key: str, row: ManifestRow, manifest: Path, sample_rate: int, on_error: OnError,
               report: ManifestReport) -> _Clip | None:
    """The row's audio as ``(1, S)`` at ``sample_rate``, or None (reported) when it can't be used."""
    path = resolve_audio(row, manifest.parent)
    try:
        wav = load_audio(path, sample_rate, channels="mix", offset=row.offset, duration=row.duration)
        if wav.shape[-1] == 0:
            raise LoditError(f"{path}: no audio samples (empty file, or offset past its end)")
    except LoditError as exc:
        _bad_row(manifest, line, exc, on_error, report)
        return None
    fields = {name: getattr(row, name) for name in TEXT_FIELDS if getattr(row, name) is not None}
    fields["duration"] = round(wav.shape[-1] / sample_rate, 6)
    fields["audio"] = str(path.resolve())
    if row.offset:
        fields["offset"] = row.offset
    return _Clip(line, key, wav, fields, row)


def _same_length_batches(clips: list[_Clip], batch_size: int) -> Iterator[list[_Clip]]:
    """Batches of at most ``batch_size`` clips that all have the same number of samples."""
    by_length: dict[int, list[_Clip]] = {}
    for clip in clips:
        by_length.setdefault(clip.wav.shape[-1], []).append(clip)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _flush(window: list[_Clip], tokenizer: FrameEncoder, writer: LatentCacheWriter, batch_size: int,
           encoded: int, seconds: float, manifest: Path, encoder_inputs: EncoderInputs | None) -> tuple[int, float]:
    """Encode the window's clips and write the missing ones in manifest order; empties ``window``."""
    if all(clip.wav is None for clip in window):  # finished by an interrupted encode
        window.clear()
        return encoded, seconds
    for index, clip in enumerate(window):
        if clip.wav is None:  # re-read, so the batches are those of an uninterrupted encode
            window[index] = _read_clip(clip.line, clip.key, clip.row, manifest, tokenizer.sample_rate, "fail",
                                       ManifestReport(str(manifest)))
    latents: dict[int, torch.Tensor] = {}
    for batch in _same_length_batches(window, batch_size):
        wav = torch.stack([clip.wav for clip in batch])  # (B, 1, S), no padding: equal lengths
        inputs = encoder_inputs([clip_record(clip.row, manifest.parent) for clip in batch]) if encoder_inputs else {}
        frames = tokenizer.encode(wav, **inputs).float().cpu()  # (B, T, D)
        for clip, clip_latents in zip(batch, frames):
            latents[id(clip)] = clip_latents
    for clip in window:
        if clip.key in writer:
            continue
        writer.add(clip.key, latents[id(clip)], clip.fields)
        encoded += 1
        seconds += clip.wav.shape[-1] / tokenizer.sample_rate
    window.clear()
    return encoded, seconds
