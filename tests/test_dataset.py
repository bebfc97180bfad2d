"""Audio datasets and batching: item shapes and masks, deterministic crops, streaming, bucketing."""

import json

import numpy as np
import pytest
import torch

from lodit.data import dataset as dataset_module
from lodit.data.audio import load_audio, save_audio
from lodit.data.batching import (
    BucketBatchSampler,
    FixedBatchSampler,
    collate_text_fields,
    pad_sequences,
    padding_efficiency,
)
from lodit.data.dataset import AudioClipDataset, IterableAudioDataset, collate_audio, crop_start
from lodit.errors import LoditError

SR = 16000


def tone(seconds, freq, sr=SR):
    t = torch.arange(round(seconds * sr)) / sr
    return (0.5 * torch.sin(2 * torch.pi * freq * t))[None]  # (1, S)


def write_manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def clips(tmp_path):
    """Three clips (0.5 s, 1 s, 2 s); the 1 s one has no duration in the manifest."""
    specs = [("a.wav", 0.5, 220.0, "low hum"), ("b.wav", 1.0, 440.0, "beep"), ("c.wav", 2.0, 660.0, "whistle")]
    rows = []
    for name, seconds, freq, caption in specs:
        save_audio(tmp_path / name, tone(seconds, freq), SR)
        row = {"audio": name, "caption": caption, "domain": "audio"}
        if name != "b.wav":
            row["duration"] = seconds
        rows.append(row)
    rows[2]["transcript"] = "hello"
    rows[2]["speaker"] = "s1"
    return write_manifest(tmp_path / "manifest.jsonl", rows)


def test_items_shapes_and_collate_mask(clips):
    ds = AudioClipDataset(clips, SR, segment_seconds=0.75)
    assert len(ds) == 3
    assert ds.lengths == [8000, 12000, 12000]  # the 1 s clip's length came from its header
    items = [ds[i] for i in range(3)]
    for item, length in zip(items, ds.lengths, strict=True):
        assert item["wav"].dtype == torch.float32 and item["wav"].shape == (1, length)
        assert item["length"] == length
    assert [i["caption"] for i in items] == ["low hum", "beep", "whistle"]
    batch = collate_audio(items)
    assert batch["wav"].shape == (3, 1, 12000)
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (3, 12000)
    assert batch["mask"].sum(1).tolist() == [8000, 12000, 12000] == batch["lengths"].tolist()
    assert batch["wav"][0, :, 8000:].abs().sum() == 0  # padding is zeros
    assert batch["transcripts"] == ["", "", "hello"] and batch["speakers"] == ["", "", "s1"]
    assert batch["domains"] == ["audio"] * 3 and batch["keys"] == ["a.wav", "b.wav", "c.wav"]  # no id: the path
    assert batch["index"].tolist() == [0, 1, 2]


def test_crop_is_the_right_window_and_resampling_works(clips, tmp_path):
    ds = AudioClipDataset(clips, SR, segment_seconds=0.25, seed=3)
    ds.set_epoch(2)
    item = ds[2]
    start = crop_start(32000, 4000, random=True, seed=3, epoch=2, index=2)
    full = load_audio(tmp_path / "c.wav")
    torch.testing.assert_close(item["wav"], full[:, start : start + 4000], atol=1e-4, rtol=0)
    whole = AudioClipDataset(clips, 8000)  # whole clips, resampled
    assert [whole[i]["length"] for i in range(3)] == [4000, 8000, 16000]


def test_crops_deterministic_per_seed_epoch_index(clips):
    first = AudioClipDataset(clips, SR, segment_seconds=0.25, seed=7)
    second = AudioClipDataset(clips, SR, segment_seconds=0.25, seed=7)
    torch.testing.assert_close(first[2]["wav"], second[2]["wav"], atol=0, rtol=0)
    first.set_epoch(1)
    assert not torch.equal(first[2]["wav"], second[2]["wav"])
    second.set_epoch(1)
    torch.testing.assert_close(first[2]["wav"], second[2]["wav"], atol=0, rtol=0)
    other_seed = AudioClipDataset(clips, SR, segment_seconds=0.25, seed=8)
    other_seed.set_epoch(1)
    assert not torch.equal(first[2]["wav"], other_seed[2]["wav"])
    fixed = AudioClipDataset(clips, SR, segment_seconds=0.25, random_crop=False)
    fixed.set_epoch(5)
    assert crop_start(32000, 4000, random=False, seed=0, epoch=5, index=2) == 0
    torch.testing.assert_close(fixed[2]["wav"], load_audio(clips.parent / "c.wav")[:, :4000], atol=0, rtol=0)


def test_index_holds_no_audio_and_min_seconds(clips, monkeypatch):
    calls = []
    monkeypatch.setattr(dataset_module, "load_audio", lambda *a, **k: calls.append(a) or torch.zeros(1, 1))
    ds = AudioClipDataset(clips, SR, min_seconds=0.75)
    assert calls == []  # building the index reads no samples
    assert len(ds) == 2 and ds.num_too_short == 1
    assert [r.caption for r in ds.records] == ["beep", "whistle"]


def test_bad_rows_fail_or_are_skipped(clips):
    with clips.open("a") as f:
        f.write('{"caption": "no audio"}\n')
    with pytest.raises(LoditError, match="line 4"):
        AudioClipDataset(clips, SR)
    assert len(AudioClipDataset(clips, SR, on_error="skip")) == 3
    with pytest.raises(LoditError, match="'duration' must be positive"):
        AudioClipDataset([{"audio": "x.wav", "duration": -1}], SR)


def test_unreadable_clip_names_the_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    manifest = write_manifest(tmp_path / "m.jsonl", [{"audio": "bad.wav", "caption": "x", "duration": 1.0}])
    ds = AudioClipDataset(manifest, SR)
    with pytest.raises(LoditError, match="bad.wav"):
        ds[0]


class CountingRows:
    """A re-iterable row source without len(): counts how many rows were pulled."""

    def __init__(self, rows):
        self.rows = rows
        self.pulled = 0

    def __iter__(self):
        for row in self.rows:
            self.pulled += 1
            yield row


@pytest.fixture()
def many_rows(tmp_path):
    save_audio(tmp_path / "x.wav", tone(0.05, 300.0), SR)
    return [{"audio": str(tmp_path / "x.wav"), "caption": f"clip {i}", "duration": 0.05} for i in range(40)]


def test_iterable_dataset_streams_with_bounded_buffer(many_rows):
    source = CountingRows(many_rows)
    ds = IterableAudioDataset(source, SR, shuffle_buffer=4, seed=1)
    stream = iter(ds)
    first = next(stream)
    assert source.pulled <= 5  # only the shuffle buffer (+1) was read before the first item
    rest = list(stream)
    indices = [first["index"]] + [item["index"] for item in rest]
    assert sorted(indices) == list(range(40)) and indices != list(range(40))
    assert [item["caption"] for item in [first] + rest] == [f"clip {i}" for i in indices]
    again = [item["index"] for item in IterableAudioDataset(many_rows, SR, shuffle_buffer=4, seed=1)]
    assert again == indices  # same (seed, epoch) -> same order
    ds.set_epoch(1)
    assert [item["index"] for item in ds] != indices


def test_iterable_dataset_splits_rows_across_ranks(many_rows):
    parts = [[item["index"] for item in IterableAudioDataset(many_rows, SR, rank=r, world_size=3)] for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(40))
    assert all(len(p) in (13, 14) for p in parts)


def test_audio_dataset_through_dataloader_with_buckets(clips):
    ds = AudioClipDataset(clips, SR, segment_seconds=1.5)
    sampler = BucketBatchSampler(ds.lengths, batch_size=2, num_buckets=2, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio)
    seen = []
    for batch in loader:
        assert batch["wav"].shape[-1] == batch["lengths"].max()
        seen += batch["index"].tolist()
    assert sorted(seen) == [0, 1, 2]


# ----------------------------------------------------------------------------- batch samplers


def lognormal_lengths(n=2000, seed=0):
    return np.maximum(1, np.random.default_rng(seed).lognormal(mean=5.0, sigma=0.8, size=n).astype(int))


def test_bucket_sampler_covers_every_index_once_and_is_deterministic():
    lengths = lognormal_lengths(503)
    sampler = BucketBatchSampler(lengths, batch_size=16, num_buckets=8, seed=4)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(503))
    assert len(batches) == len(sampler) == 32
    assert sum(len(b) < 16 for b in batches) == 1  # at most one short batch per epoch
    assert list(BucketBatchSampler(lengths, batch_size=16, num_buckets=8, seed=4)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    other = BucketBatchSampler(lengths, batch_size=16, num_buckets=8, seed=4)
    other.set_epoch(1)
    assert list(other) == list(sampler)
    dropped = BucketBatchSampler(lengths, batch_size=16, num_buckets=8, seed=4, drop_last=True)
    kept = [i for b in dropped for i in b]
    assert all(len(b) == 16 for b in dropped) and len(kept) == 496 == len(set(kept))


def test_bucket_sampler_frame_budget():
    lengths = lognormal_lengths(600)
    budget = 4000
    sampler = BucketBatchSampler(lengths, max_frames_per_batch=budget, num_buckets=6, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(600))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget
    assert len(sampler) == len(batches)
    with pytest.raises(ValueError, match="exactly one"):
        BucketBatchSampler(lengths, 4, max_frames_per_batch=budget)


def test_bucketing_cuts_padding_vs_random_batches():
    lengths = lognormal_lengths(2000)
    bucketed = padding_efficiency(list(BucketBatchSampler(lengths, batch_size=16, num_buckets=20, seed=0)), lengths)
    random = padding_efficiency(list(FixedBatchSampler(len(lengths), 16, seed=0)), lengths)
    assert random < 0.35 and bucketed > 0.8  # lognormal lengths: over 2.5x less padded compute


def test_fixed_batch_sampler():
    sampler = FixedBatchSampler(10, 3, seed=2)
    batches = list(sampler)
    assert [len(b) for b in batches] == [3, 3, 3, 1] and sorted(sum(batches, [])) == list(range(10))
    assert list(FixedBatchSampler(10, 3, seed=2)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(FixedBatchSampler(10, 3, shuffle=False, drop_last=True)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(FixedBatchSampler(10, 3, drop_last=True)) == 3


def test_pad_sequences_and_text_fields():
    padded, mask, lengths = pad_sequences([torch.ones(2, 3), torch.ones(2, 5)], dim=-1, lengths=[2, 5])
    assert padded.shape == (2, 2, 5) and padded[0, :, 3:].abs().sum() == 0
    assert mask.tolist() == [[True, True, False, False, False], [True] * 5] and lengths.tolist() == [2, 5]
    fields = collate_text_fields([{"caption": "a", "key": "k"}, {"transcript": "t"}])
    assert fields["captions"] == ["a", ""] and fields["transcripts"] == ["", "t"] and fields["keys"] == ["k", ""]
