"""Whole-clip frozen-teacher features on disk, shared by the trainers that need them.

A frozen semantic teacher is costly (Whisper encodes a whole 30-s window for every clip, however
short), and its features never change, so the SemBo trainer and the tokenizer trainer compute them
once per clip and read them afterwards:

* :func:`clip_key` names a clip's audio exactly as the teacher hears it (file, offset, duration,
  size, modification time, and how it is read: rate, channel policy, loudness).
* :func:`cache_teacher_features` runs the teacher over the whole clips of a dataset not yet cached
  and stores each clip's features ``(T, D)`` in a
  :class:`~lodit.latent_tokenizer.feature_cache.FeatureCache`; :func:`fill_teacher_cache` does it
  for a run, with several processes sharing the work.
* :func:`cached_teacher_inputs` serves the cached features of whole clips to ``lodit encode``, so
  encoding a training set with a teacher tokenizer does not run the teacher over it again.
* :class:`TeacherFeatureCrops` adds to each audio crop of an
  :class:`~lodit.data.dataset.AudioClipDataset` the cached features of the frames it covers, and
  :func:`collate_audio_with_teacher_features` batches them as ``encoder_inputs["semantic_high"]``
  (what :meth:`Tokenizer.forward <lodit.latent_tokenizer.tokenizer.Tokenizer.forward>` hands its
  encoder).

Crop alignment: features are cached for the whole clip, at one frame per ``hop`` samples (the
tokenizer's latent frame). A crop starting ``s`` samples into the clip covers frames
``s / hop ...``, which are whole frames only if ``s`` is a multiple of ``hop``; random crops must
therefore come from a dataset built with ``crop_multiple`` a multiple of the hop, and other crops
are refused.

Context: cached features are computed with the whole clip as context (and, with a loudness target,
from the loudness-normalised whole clip), while the teacher run on the fly sees only the crop. For
Whisper, whose attention spans its 30-s window, a crop's frames therefore differ somewhat from the
features of the crop alone (they are the same when the crop is the whole clip). Frames past the end
of a shorter item in a batch (padding) get zero features; on the fly they would be the teacher's
features of the zero padding.

May import: torch, accelerate, ``lodit.data``, ``lodit.training``, the semantic encoder and feature
cache modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch.utils.data import Dataset

from lodit.data.batching import pad_sequences
from lodit.data.dataset import AudioClipDataset, ClipLoader, ClipRecord, collate_audio
from lodit.errors import LoditError
from lodit.latent_tokenizer.encoder import pad_to_hop
from lodit.latent_tokenizer.feature_cache import FeatureCache
from lodit.latent_tokenizer.semantic import SemanticEncoder, num_frames
from lodit.training.progress import Progress

log = logging.getLogger(__name__)

ENCODER_INPUTS = "encoder_inputs"  # the batch entry holding keyword inputs for the tokenizer's encoder
SEMANTIC_HIGH = "semantic_high"  # LoSATok's keyword for precomputed teacher features


def clip_key(record: ClipRecord, reader: ClipLoader) -> str:
    """A feature-cache key that changes when the audio the teacher hears can have changed: the
    file (path, size, modification time), the clip's offset and duration, and how ``reader``
    reads it (sample rate, channel policy, loudness target)."""
    path = Path(record.path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise LoditError(f"{path}: cannot read the audio file ({exc.strerror}); fix the manifest") from None
    return (f"{path.resolve()}|offset={record.offset}|duration={record.duration}|{stat.st_size}|{stat.st_mtime_ns}"
            f"|rate={reader.sample_rate}|channels={reader.channels}|loudness={reader.loudness}")


def whole_clip_reader(dataset: AudioClipDataset) -> ClipLoader:
    """A reader of ``dataset``'s whole clips, with its rate, channel policy and loudness target."""
    crops = dataset.loader
    return ClipLoader(crops.sample_rate, segment_seconds=None, random_crop=False, seed=0,
                      channels=crops.channels, loudness=crops.loudness)


def cache_teacher_features(
    dataset: AudioClipDataset,
    teacher: SemanticEncoder,
    cache: FeatureCache,
    *,
    batch_size: int = 8,
    process_index: int = 0,
    num_processes: int = 1,
    show_progress: bool = True,
) -> list[str]:
    """Compute and store the features of every clip of ``dataset`` not yet in ``cache`` — always
    of the whole clip, whether ``dataset`` serves whole clips or crops — and return every clip's
    key. With ``num_processes > 1``, this process handles clips ``process_index::num_processes``
    (all processes return all keys).

    Clips are batched longest first so similar lengths share a forward; each clip keeps
    ``num_frames(its samples)`` frames of the batch's features. The batch is zero-padded to whole
    output frames, as a tokenizer pads its input to whole latent frames, so every output frame
    pools complete groups of native frames: the cached features are what the tokenizer's own
    teacher pass computes for the clip (exactly, for Whisper, which zero-pads every clip to whole
    30-s windows anyway).
    """
    reader = whole_clip_reader(dataset)
    keys = [clip_key(record, reader) for record in dataset.records]
    mine = range(process_index, len(dataset), num_processes)
    todo = sorted((i for i in mine if keys[i] not in cache), key=lambda i: -int(dataset.clip_lengths[i]))
    if not todo:
        return keys
    frame = dataset.sample_rate / teacher.target_rate
    frame_samples = round(frame) if abs(frame - round(frame)) < 1e-9 else 0  # 640 at 25 Hz
    progress = Progress(len(todo), desc="teacher features", enabled=show_progress,
                        print_every=max(1, len(todo) // 10))
    done = 0
    try:
        for start in range(0, len(todo), batch_size):
            indices = todo[start : start + batch_size]
            clips = [reader.load(dataset.records[i], i, 0, int(dataset.clip_lengths[i])) for i in indices]
            batch = collate_audio(clips)
            wav = pad_to_hop(batch["wav"], frame_samples) if frame_samples else batch["wav"]  # (B, C, S)
            features = teacher(wav.to(teacher.device))  # (B, T_max, D)
            for row, index in enumerate(indices):
                frames = num_frames(int(batch["lengths"][row]), teacher.target_rate, dataset.sample_rate)
                clip = features[row, :frames]  # (T_clip, D)
                cache.get(keys[index], lambda clip=clip: clip)
            done += len(indices)
            progress.update(done)
    finally:
        progress.close()
    return keys


def fill_teacher_cache(dataset: AudioClipDataset, teacher: SemanticEncoder, cache: FeatureCache, *,
                       batch_size: int = 8) -> list[str]:
    """:func:`cache_teacher_features` for a training run: the teacher runs on this process's
    device, every process computes its strided share, and all return once every process is done
    (so each can then read any clip's features). Returns every clip's key."""
    state = PartialState()
    teacher.to(state.device)
    keys = cache_teacher_features(dataset, teacher, cache, batch_size=batch_size,
                                  process_index=state.process_index, num_processes=state.num_processes,
                                  show_progress=state.is_main_process)
    state.wait_for_everyone()
    if cache.misses:
        log.debug("computed teacher features of %d clips into %s", cache.misses, cache.folder)
    return keys


def cached_teacher_inputs(
    teacher: SemanticEncoder, cache_root: str | Path, sample_rate: int
) -> Callable[[Sequence[ClipRecord]], dict[str, torch.Tensor]]:
    """For whole clips read as ``lodit encode`` reads them (``sample_rate``, channels mixed, no
    loudness target): a function giving a batch of clips' cached features of ``teacher`` as encoder
    inputs, ``{"semantic_high": (B, T, D)}``, or ``{}`` when any clip of the batch is not cached
    (the tokenizer's own teacher then runs on that batch). Features cached with another rate,
    channel policy or loudness target have other keys and are never served."""
    cache = FeatureCache(cache_root, teacher.identity())
    reader = ClipLoader(sample_rate, segment_seconds=None, random_crop=False, seed=0, channels="mix", loudness=None)

    def inputs(records: Sequence[ClipRecord]) -> dict[str, torch.Tensor]:
        found = [cache.find(clip_key(record, reader)) for record in records]
        if any(features is None for features in found):
            return {}
        return {SEMANTIC_HIGH: torch.stack(found)}  # (B, T, D): a batch's clips have one length

    return inputs


class TeacherFeatureCrops(Dataset):
    """The items of ``clips`` (audio crops or whole clips), each with the cached teacher features
    of the latent frames it covers: ``semantic_high (ceil(length / hop), D)`` float32, taken from
    frame ``crop_start / hop`` of its clip's features (``keys[i]`` in ``cache``, from
    :func:`cache_teacher_features`) and zero-padded at the end if the clip's features run out.

    Random crops must start at multiples of ``hop`` (build ``clips`` with ``crop_multiple=hop``);
    anything else is refused, here or, for a misaligned item, when it is loaded. See the module
    docstring for how these features differ from the teacher's pass over the crop alone.
    """

    def __init__(self, clips: AudioClipDataset, cache: FeatureCache, keys: Sequence[str], hop: int):
        if len(keys) != len(clips):
            raise ValueError(f"{len(keys)} feature keys for {len(clips)} clips")
        loader = clips.loader
        if loader.segment is not None and loader.random_crop and loader.crop_multiple % hop:
            raise LoditError(
                f"random crops start at multiples of {loader.crop_multiple} samples, but cached teacher features "
                f"come in frames of {hop} samples (the tokenizer hop); build the dataset with crop_multiple={hop}, "
                "or set data.random_crop=false, or compute the features on the fly (data.teacher_cache='')"
            )
        self.clips = clips
        self.cache = cache
        self.keys = list(keys)
        self.hop = int(hop)

    @property
    def lengths(self) -> list[int]:
        return self.clips.lengths

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        item = self.clips[index]
        start = int(item["crop_start"])
        if start % self.hop:
            raise LoditError(
                f"clip {index} was cropped at sample {start}, not a multiple of the tokenizer hop {self.hop}, so its "
                "cached teacher features cannot be aligned; build the dataset with crop_multiple equal to the hop"
            )
        frames = -(-int(item["length"]) // self.hop)  # ceil: the encoder pads the crop to whole frames
        features = self.cache.get(self.keys[index], lambda: self._missing(index))  # (T_clip, D)
        first = start // self.hop
        crop = features[first : first + frames].float()  # (<= frames, D)
        item[SEMANTIC_HIGH] = F.pad(crop, (0, 0, 0, frames - crop.shape[0]))  # (frames, D)
        return item

    def _missing(self, index: int) -> torch.Tensor:
        raise LoditError(
            f"teacher features of clip {index} vanished from {self.cache.folder} during training; "
            "run the command again to recompute them"
        )


def collate_audio_with_teacher_features(items: Sequence[dict]) -> dict:
    """:func:`~lodit.data.dataset.collate_audio` plus ``encoder_inputs = {"semantic_high": (B, T_max, D)}``,
    zero-padded at the end to ``T_max = ceil(S_max / hop)``, the frame count of the padded batch."""
    batch = collate_audio(items)
    features, _, _ = pad_sequences([item[SEMANTIC_HIGH] for item in items], dim=0)  # (B, T_max, D)
    batch[ENCODER_INPUTS] = {SEMANTIC_HIGH: features}
    return batch
