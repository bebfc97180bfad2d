"""Latent cache: round trip over several shards, exact stats, producer identity, atomic and resumable writes."""

import json
import os
import pickle

import pytest
import torch

from lodit.data.batching import BucketBatchSampler
from lodit.data.dataset import crop_start
from lodit.data.latent_cache import (
    LatentCache,
    LatentCacheWriter,
    LatentDataset,
    collate_latents,
    denormalize,
    normalize,
)
from lodit.data.latent_cache import reader as cache_module
from lodit.errors import LoditError

DIM = 4
PRODUCER = {"name": "tiny", "config_hash": "abc", "latent_dim": DIM, "frame_rate": 25, "sample_rate": 16000}
LENGTHS = [7, 13, 3, 20, 9]


def make_clips(seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = []
    for i, frames in enumerate(LENGTHS):
        latents = 3.0 + torch.randn(frames, DIM, generator=g) * torch.tensor([0.5, 1.0, 2.0, 4.0])
        fields = {"caption": f"sound {i}", "transcript": "hi" if i % 2 else "", "domain": "speech", "speaker": f"s{i}"}
        clips.append((f"clip-{i}", latents, fields))
    return clips


def write_cache(root, clips, **kwargs):
    with LatentCacheWriter(root, producer=PRODUCER, shard_frames=16, **kwargs) as writer:
        for key, latents, fields in clips:
            writer.add(key, latents, fields)
    return LatentCache(root)


def test_round_trip_across_shards(tmp_path):
    clips = make_clips()
    cache = write_cache(tmp_path / "cache", clips)
    assert len(cache) == 5 and cache.dim == DIM and cache.producer == PRODUCER
    assert len(cache.meta["shards"]) == 3  # 7+13 | 3+20 | 9 with 16-frame shards
    assert cache.meta["num_frames"] == sum(LENGTHS) and cache.lengths.tolist() == LENGTHS
    for i, (key, latents, fields) in enumerate(clips):
        item = cache[i]
        assert item.key == key and item.fields == fields
        assert item.latents.dtype == torch.float32 and torch.equal(item.latents, latents)
    streamed = list(cache.iter_items())
    assert [it.key for it in streamed] == [key for key, _, _ in clips]
    assert all(torch.equal(it.latents, clip[1]) for it, clip in zip(streamed, clips, strict=True))
    rows = [json.loads(line) for line in (tmp_path / "cache" / "index.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["offset"], r["length"]) for r in rows] == [
        ("shard-00000.safetensors", 0, 7), ("shard-00000.safetensors", 7, 13),
        ("shard-00001.safetensors", 0, 3), ("shard-00001.safetensors", 3, 20), ("shard-00002.safetensors", 0, 9)]
    assert not list(tmp_path.glob("cache.tmp-*"))
    torch.testing.assert_close(cache.read(3, start=5, length=4), clips[3][1][5:9], atol=0, rtol=0)


def test_stats_are_exact_over_all_frames(tmp_path):
    clips = make_clips(seed=1)
    cache = write_cache(tmp_path / "cache", clips)
    frames = torch.cat([latents for _, latents, _ in clips]).double()  # (sum T, D)
    torch.testing.assert_close(cache.mean.double(), frames.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cache.std.double(), frames.std(0, correction=0), atol=1e-6, rtol=0)
    stats = json.loads((tmp_path / "cache" / "stats.json").read_text())
    assert stats["count"] == sum(LENGTHS)
    torch.testing.assert_close(torch.tensor(stats["mean"], dtype=torch.float64), frames.mean(0), atol=1e-12, rtol=0)


def test_half_precision_storage_stats_match_stored_values(tmp_path):
    clips = make_clips(seed=2)
    cache = write_cache(tmp_path / "cache", clips, dtype="float16")
    stored = torch.cat([cache[i].latents for i in range(len(cache))]).double()
    torch.testing.assert_close(cache.std.double(), stored.std(0, correction=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cache[1].latents, clips[1][1], atol=1e-2, rtol=1e-3)


def test_producer_mismatch_is_named(tmp_path):
    cache = write_cache(tmp_path / "cache", make_clips())
    cache.check_producer(dict(PRODUCER))
    named = r"cache .*cache was made by a tokenizer with config_hash 'abc'.*'def'.*lodit encode"
    with pytest.raises(LoditError, match=named):
        cache.check_producer(dict(PRODUCER, config_hash="def"))
    with pytest.raises(LoditError, match="latent_dim 4, .* 128"):
        cache.check_producer(dict(PRODUCER, latent_dim=128))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    root = tmp_path / "cache"
    write_cache(root, make_clips())
    with pytest.raises(LoditError, match="already exists.*overwrite"):
        LatentCacheWriter(root, producer=PRODUCER)
    replaced = write_cache(root, make_clips(seed=5)[:2], overwrite=True)
    assert len(replaced) == 2 and torch.equal(replaced[1].latents, make_clips(seed=5)[1][1])
    other = tmp_path / "papers"
    other.mkdir()
    (other / "thesis.txt").write_text("keep me")
    with pytest.raises(LoditError, match="not a latent cache"):
        LatentCacheWriter(other, producer=PRODUCER, overwrite=True)
    assert (other / "thesis.txt").read_text() == "keep me"


def test_bad_input_errors(tmp_path):
    with pytest.raises(LoditError, match="not found.*lodit encode"):
        LatentCache(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoditError, match="not a complete latent cache"):
        LatentCache(tmp_path / "empty")
    writer = LatentCacheWriter(tmp_path / "c", producer=PRODUCER)
    writer.add("a", torch.zeros(2, DIM))
    with pytest.raises(LoditError, match="'a' appears twice"):
        writer.add("a", torch.zeros(2, DIM))
    with pytest.raises(LoditError, match="NaN"):
        writer.add("b", torch.full((2, DIM), float("nan")))
    with pytest.raises(ValueError, match=r"\(T >= 1, 4\)"):
        writer.add("c", torch.zeros(2, DIM + 1))
    writer.discard()
    with pytest.raises(LoditError, match="no clips"):
        LatentCacheWriter(tmp_path / "d", producer=PRODUCER).close()


def test_interrupted_write_leaves_no_cache_and_resumes(tmp_path):
    clips = make_clips()
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="power cut"):
        with LatentCacheWriter(root, producer=PRODUCER, shard_frames=16) as writer:
            for key, latents, fields in clips[:3]:
                writer.add(key, latents, fields)
            raise RuntimeError("power cut")
    assert not root.exists()
    (partial,) = tmp_path.glob("cache.tmp-*")
    with pytest.raises(LoditError, match="not a complete latent cache"):
        LatentCache(partial)
    # The writing process "died": give its folder a pid that is not running, then resume.
    os.replace(partial, tmp_path / "cache.tmp-999999999")
    with LatentCacheWriter(root, producer=PRODUCER, shard_frames=16, resume=True) as writer:
        done = [key for key, _, _ in clips if key in writer]
        # the complete shard survives, and so does the clip of the shard that was not yet written
        assert done == ["clip-0", "clip-1", "clip-2"]
        for key, latents, fields in clips:
            if key not in writer:
                writer.add(key, latents, fields)
    resumed = LatentCache(root)
    clean = write_cache(tmp_path / "clean", clips)
    assert resumed.keys == clean.keys and resumed.meta["shards"] == clean.meta["shards"]
    assert all(torch.equal(resumed[i].latents, clean[i].latents) for i in range(len(clean)))
    assert torch.equal(resumed.mean, clean.mean) and torch.equal(resumed.std, clean.std)
    assert not list(tmp_path.glob("cache.tmp-*"))
    # the resumed cache is file for file the uninterrupted one (no pending-* clip files left)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in (tmp_path / "clean").iterdir())
    for path in (tmp_path / "clean").iterdir():
        assert (root / path.name).read_bytes() == path.read_bytes(), path.name


def test_iter_items_opens_one_shard_at_a_time(tmp_path, monkeypatch):
    cache = write_cache(tmp_path / "cache", make_clips())
    cache[4]  # random access keeps a shard mapped; streaming must release it first
    state = {"open": 0, "max_open": 0, "opens": 0}
    real_safe_open = cache_module.safe_open

    class CountingOpen:
        def __init__(self, *args, **kwargs):
            self.inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            state["open"] += 1
            state["opens"] += 1
            state["max_open"] = max(state["max_open"], state["open"] + (cache._handle is not None))
            return self.inner.__enter__()

        def __exit__(self, *exc):
            state["open"] -= 1
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(cache_module, "safe_open", CountingOpen)
    keys = []
    for item in cache.iter_items():
        keys.append(item.key)
        assert state["open"] == 1
    assert keys == [f"clip-{i}" for i in range(5)]
    assert state == {"open": 0, "max_open": 1, "opens": 3}


def test_latent_dataset_normalises_crops_and_collates(tmp_path):
    clips = make_clips()
    cache = write_cache(tmp_path / "cache", clips)
    ds = LatentDataset(cache, crop_frames=8, seed=3)
    assert ds.lengths == [7, 8, 3, 8, 8]
    item = ds[3]

    def window(epoch):
        start = crop_start(20, 8, random=True, seed=3, epoch=epoch, index=3)
        return clips[3][1][start : start + 8]

    torch.testing.assert_close(item["latents"], normalize(window(0), cache.mean, cache.std), atol=0, rtol=0)
    assert item["caption"] == "sound 3" and item["transcript"] == "hi" and item["key"] == "clip-3"
    again = LatentDataset(tmp_path / "cache", crop_frames=8, seed=3)[3]
    assert torch.equal(again["latents"], item["latents"])
    ds.set_epoch(1)
    torch.testing.assert_close(ds[3]["latents"], normalize(window(1), cache.mean, cache.std), atol=0, rtol=0)
    assert len({tuple(window(epoch)[0].tolist()) for epoch in range(4)}) > 1  # crops move between epochs
    torch.testing.assert_close(denormalize(item["latents"], cache.mean, cache.std), window(0))
    whole = LatentDataset(cache, normalize=False)
    sampler = BucketBatchSampler(whole.lengths, batch_size=2, num_buckets=2, seed=0, shuffle=False)
    batches = [collate_latents([whole[i] for i in indices]) for indices in sampler]
    first = batches[0]  # the two shortest clips: 3 and 7 frames
    assert first["latents"].shape == (2, 7, DIM) and first["keys"] == ["clip-2", "clip-0"]
    assert first["mask"].sum(1).tolist() == [3, 7] == first["lengths"].tolist()
    assert first["latents"][0, 3:].abs().sum() == 0 and torch.equal(first["latents"][1], clips[0][1])
    assert first["captions"] == ["sound 2", "sound 0"] and first["speakers"] == ["s2", "s0"]
    normalised = torch.cat([LatentDataset(cache)[i]["latents"] for i in range(5)])
    torch.testing.assert_close(normalised.mean(0), torch.zeros(DIM), atol=1e-5, rtol=0)


def test_cache_pickles_for_dataloader_workers(tmp_path):
    cache = write_cache(tmp_path / "cache", make_clips())
    cache[0]  # a shard handle is open now
    clone = pickle.loads(pickle.dumps(cache))
    assert torch.equal(clone[3].latents, cache[3].latents)
