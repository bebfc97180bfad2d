"""Cached teacher features for tokenizer training (``data.teacher_cache``): the teacher runs once
per clip whatever the epochs and runs, crops start on whole latent frames and get the whole-clip
features of exactly their frames, the training loss is the loss of those features given explicitly,
resume stays exact, and misaligned or pointless set-ups are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import save_tiny_whisper
from safetensors.torch import load_file

from lodit.config import load_config
from lodit.data.audio import load_audio, save_audio
from lodit.data.batching import epoch_rng
from lodit.data.dataset import AudioClipDataset, crop_start
from lodit.data.manifest import write_manifest
from lodit.errors import LoditError
from lodit.latent_tokenizer.encoder import pad_to_hop
from lodit.latent_tokenizer.semantic import WhisperSemanticEncoder, build_semantic_encoder
from lodit.latent_tokenizer.teacher_features import (
    TeacherFeatureCrops,
    collate_audio_with_teacher_features,
)
from lodit.latent_tokenizer.train import (
    MODEL,
    TokenizerTrainConfig,
    build_dataset,
    build_task,
    train_tokenizer,
    with_teacher_features,
)

transformers = pytest.importorskip("transformers")

SR = 16000
HOP = 640
TEACHER_DIM = 32  # the tiny random Whisper's width
SECONDS = [1.3, 0.9, 0.4]  # the last clip is shorter than a 0.5-s crop: it stays whole
CONFIG = "configs/tokenizer/dim1280_tiny.yaml"  # a LoSATok encoder without SemBo: nothing else to train first


def _tone(seconds: float, freq: float, seed: int) -> torch.Tensor:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * freq * t + 2.0 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return torch.from_numpy(wav.astype(np.float32))[None]  # (1, S)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny randomly initialised Whisper saved like a hub checkpoint (80 mel bins, 30-s windows)."""
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"), TEACHER_DIM)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i, seconds in enumerate(SECONDS):
        save_audio(folder / f"clip{i}.wav", _tone(seconds, 200.0 + 90 * i, seed=i), SR)
    write_manifest(folder / "manifest.jsonl", [{"audio": f"clip{i}.wav"} for i in range(len(SECONDS))])
    return folder / "manifest.jsonl"


def _config(whisper_dir, manifest, cache, *extra) -> TokenizerTrainConfig:
    return load_config(
        TokenizerTrainConfig,
        CONFIG,
        [
            f"data.manifest={manifest}",
            f"data.teacher_cache={cache}",
            "data.segment_seconds=0.5",
            f"tokenizer.encoder.semantic.teacher.model={whisper_dir}",
            f"tokenizer.encoder.semantic.teacher_dim={TEACHER_DIM}",
            "tokenizer.encoder.semantic.d_high=24",
            "tokenizer.latent_dim=24",
            "tokenizer.encoder.n_mels=32",
            "tokenizer.decoder.dim=16",
            "tokenizer.decoder.intermediate_dim=32",
            "tokenizer.decoder.depth=1",
            "training.batch_size=2",
            *extra,
        ],
    )


@pytest.fixture
def teacher_rows(monkeypatch) -> list[int]:
    """Counts the clips every teacher forward (whoever makes it) is run on."""
    rows: list[int] = []
    original = WhisperSemanticEncoder.native_features

    def counted(self, wav):
        rows.append(wav.shape[0])
        return original(self, wav)

    monkeypatch.setattr(WhisperSemanticEncoder, "native_features", counted)
    return rows


def _cached_dataset(config):
    clips = build_dataset(config)
    task = build_task(config)
    dataset, collate = with_teacher_features(config, task.tokenizer, clips)
    return dataset, collate, task


# ---------------------------------------------------------------------------- crops


def test_crop_starts_are_whole_multiples_deterministic_and_reported(manifest):
    total, crop = 20800, 8000
    starts = {crop_start(total, crop, random=True, seed=3, epoch=e, index=1, multiple=HOP) for e in range(300)}
    assert starts == set(range(0, total - crop + 1, HOP))  # every whole-frame start that fits, and only those
    # multiple=1 is the old behaviour, draw for draw
    assert crop_start(total, crop, random=True, seed=3, epoch=7, index=1) == int(
        epoch_rng(3, 7, 1).integers(0, total - crop + 1))

    dataset = AudioClipDataset(manifest, SR, segment_seconds=0.5, seed=5, crop_multiple=HOP)
    again = AudioClipDataset(manifest, SR, segment_seconds=0.5, seed=5, crop_multiple=HOP)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        again.set_epoch(epoch)
        for index, seconds in enumerate(SECONDS):
            item = dataset[index]
            start = item["crop_start"]
            assert start % HOP == 0 and start + item["length"] <= round(seconds * SR)
            assert start == again[index]["crop_start"]  # the same for the same (seed, epoch, index)
            whole = load_audio(dataset.records[index].path, SR)
            assert torch.equal(item["wav"], whole[:, start : start + item["length"]])  # the reported window
    assert AudioClipDataset(manifest, SR)[0]["crop_start"] == 0  # whole clips start at 0
    with pytest.raises(LoditError, match="crop_multiple"):
        AudioClipDataset(manifest, SR, segment_seconds=0.5, crop_multiple=0)


# ---------------------------------------------------------------------------- features of a crop


def test_crops_get_the_whole_clip_features_of_their_frames(whisper_dir, manifest, tmp_path, teacher_rows):
    config = _config(whisper_dir, manifest, tmp_path / "cache")
    dataset, collate, task = _cached_dataset(config)
    assert collate is collate_audio_with_teacher_features and isinstance(dataset, TeacherFeatureCrops)
    assert sum(teacher_rows) == len(SECONDS)  # every clip once, before training

    teacher = build_semantic_encoder(config.tokenizer.encoder.semantic.teacher)
    whole_features = []
    for index, seconds in enumerate(SECONDS):
        wav = load_audio(dataset.clips.records[index].path, SR)  # (1, S)
        alone = teacher(pad_to_hop(wav[None], HOP))[0]  # (T, D): the clip alone, padded as a tokenizer pads
        cached = dataset.cache.get(dataset.keys[index], lambda: pytest.fail("not cached"))
        assert cached.shape == alone.shape == (math.ceil(seconds * SR / HOP), TEACHER_DIM)
        torch.testing.assert_close(cached, alone, atol=5e-4, rtol=0)  # float noise of batched maths only
        whole_features.append(cached)

    seen_starts = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(SECONDS)):
            item = dataset[index]
            first, frames = item["crop_start"] // HOP, math.ceil(item["length"] / HOP)
            seen_starts.add((index, first))
            assert item["semantic_high"].shape == (frames, TEACHER_DIM)
            assert torch.equal(item["semantic_high"], whole_features[index][first : first + frames])
    assert len({s for s in seen_starts if s[0] == 0}) > 1  # the long clip was really cropped at several places

    batch = collate([dataset[2], dataset[0]])  # 0.4-s clip (10 frames) with a 0.5-s crop (13 frames)
    features = batch["encoder_inputs"]["semantic_high"]
    assert features.shape == (2, math.ceil(batch["wav"].shape[-1] / HOP), TEACHER_DIM) == (2, 13, TEACHER_DIM)
    assert torch.equal(features[0, :10], dataset[2]["semantic_high"]) and not features[0, 10:].any()  # zero padding
    assert sum(teacher_rows) == len(SECONDS) + len(SECONDS)  # only the check's own teacher ran since
    assert not task.tokenizer.encoder.teacher.loaded  # the tokenizer never built its teacher


def test_training_loss_is_the_loss_of_the_cached_features_given_explicitly(whisper_dir, manifest, tmp_path):
    config = _config(whisper_dir, manifest, tmp_path / "cache", "data.random_crop=false")
    dataset, collate, task = _cached_dataset(config)
    task.criterion.to("cpu")
    tokenizer = task.tokenizer.train()

    batch = collate([dataset[0], dataset[2]])
    torch.manual_seed(1)
    loss, scalars = task.loss(MODEL, batch, step=0)  # step 0: reconstruction + model losses (no GAN yet)

    real, mask = batch["wav"], batch["mask"][:, None].float()
    explicit = torch.stack([dataset[0]["semantic_high"], torch.zeros(13, TEACHER_DIM)])  # (2, 13, D)
    explicit[1, :10] = dataset[2]["semantic_high"]
    torch.manual_seed(1)  # the same VAE noise
    out = tokenizer(real, semantic_high=explicit)
    expected, _ = task.criterion.generator_loss(real, out.recon * mask, out.losses)
    assert torch.equal(loss, expected)
    assert scalars["semantic_high"] > 0 and not tokenizer.encoder.teacher.loaded

    # a crop that is the whole clip: cached features are the teacher's own pass, so the loss is the on-the-fly one
    short = collate([dataset[2]])
    torch.manual_seed(2)
    cached_loss, _ = task.loss(MODEL, short, step=1)
    torch.manual_seed(2)
    on_the_fly, _ = task.loss(MODEL, {k: v for k, v in short.items() if k != "encoder_inputs"}, step=1)
    assert tokenizer.encoder.teacher.loaded
    torch.testing.assert_close(cached_loss, on_the_fly, atol=1e-4, rtol=1e-5)


# ---------------------------------------------------------------------------- whole runs


def test_teacher_runs_once_per_clip_over_epochs_and_runs_and_resume_is_exact(
    whisper_dir, manifest, tmp_path, teacher_rows
):
    # 3 clips, batches of 2: two batches per epoch, so 6 steps are 3 epochs; GAN from step 2
    config = _config(whisper_dir, manifest, tmp_path / "cache", "training.max_steps=6",
                     "training.checkpoint_every=3", "training.log_every=1")
    straight = train_tokenizer(config, tmp_path / "straight")
    assert straight.step == 6 and sum(teacher_rows) == len(SECONDS)
    first = train_tokenizer(config, tmp_path / "resumed", stop_at=3)
    assert first.step == 3 and first.final is None
    resumed = train_tokenizer(config, tmp_path / "resumed")
    assert resumed.step == 6
    assert sum(teacher_rows) == len(SECONDS)  # three runs, six epochs: each clip went through the teacher once
    assert config.data.teacher_cache == str(tmp_path / "cache")
    for name in ("model", "discriminator"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        b = load_file(tmp_path / "resumed" / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"


# ---------------------------------------------------------------------------- refused set-ups


def test_misaligned_or_pointless_set_ups_are_refused(whisper_dir, manifest, tmp_path, teacher_rows):
    # random crops at half frames cannot take whole frames of cached features
    clips = AudioClipDataset(manifest, SR, segment_seconds=0.5, crop_multiple=HOP // 2)
    with pytest.raises(LoditError, match=f"build the dataset with crop_multiple={HOP}"):
        TeacherFeatureCrops(clips, None, [""] * len(clips), HOP)
    fixed = AudioClipDataset(manifest, SR, segment_seconds=0.5, random_crop=False)  # always at 0: aligned
    assert len(TeacherFeatureCrops(fixed, None, [""] * len(fixed), HOP)) == len(SECONDS)

    plain = load_config(TokenizerTrainConfig, "configs/tokenizer/tiny.yaml",
                        [f"data.manifest={manifest}", f"data.teacher_cache={tmp_path / 'cache'}"])
    with pytest.raises(LoditError, match="'mel_convnext' encoder has no semantic teacher"):
        _cached_dataset(plain)
    other_rate = _config(whisper_dir, manifest, tmp_path / "cache", "tokenizer.encoder.semantic.teacher.target_rate=50")
    with pytest.raises(LoditError, match="target_rate=50 Hz differs from tokenizer.latent_rate=25 Hz"):
        _cached_dataset(other_rate)
    assert teacher_rows == []  # refused before any teacher work


# ---------------------------------------------------------------------------- encoding


def test_encode_reads_the_training_cache_instead_of_running_the_teacher(whisper_dir, manifest, tmp_path,
                                                                        teacher_rows):
    """``lodit encode --teacher-cache``: the features the training cached stand in for the teacher's
    pass over whole clips and give the latents of an encode without them."""
    from lodit.cli import main
    from lodit.data.latent_cache import LatentCache
    from lodit.latent_tokenizer.encode import encode_manifest

    config = _config(whisper_dir, manifest, tmp_path / "cache", "training.max_steps=2",
                     "training.checkpoint_every=2", "loss.adversarial_start_step=10")
    train_tokenizer(config, tmp_path / "run")
    final = tmp_path / "run" / "final"
    assert sum(teacher_rows) == len(SECONDS)  # the cache was filled once
    teacher_rows.clear()
    encode_manifest(final, manifest, tmp_path / "plain", batch_size=2)
    assert sum(teacher_rows) == len(SECONDS)  # without the cache the teacher hears every clip again
    teacher_rows.clear()
    assert main(["encode", "--tokenizer", str(final), "--manifest", str(manifest), "--out", str(tmp_path / "cached"),
                 "--batch-size", "2", "--teacher-cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert sum(teacher_rows) == 0
    plain, cached = LatentCache(tmp_path / "plain"), LatentCache(tmp_path / "cached")
    assert len(plain) == len(cached) == len(SECONDS)
    for i in range(len(SECONDS)):
        torch.testing.assert_close(cached.read(i), plain.read(i), atol=1e-5, rtol=1e-5)
    # clips the cache lacks (another manifest's) go through the teacher as before
    other = tmp_path / "other"
    other.mkdir()
    save_audio(other / "new.wav", _tone(0.7, 310.0, seed=9), SR)
    write_manifest(other / "manifest.jsonl", [{"audio": "new.wav"}])
    encode_manifest(final, other / "manifest.jsonl", tmp_path / "new", teacher_cache=tmp_path / "cache")
    assert sum(teacher_rows) == 1


def test_teacher_cache_needs_a_teacher_tokenizer(tmp_path, capsys):
    from lodit.cli import main
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    config = load_config(TokenizerTrainConfig, "configs/tokenizer/tiny.yaml").tokenizer
    folder = Tokenizer(config).save_pretrained(tmp_path / "tok")
    save_audio(tmp_path / "a.wav", _tone(0.5, 200.0, seed=0), SR)
    write_manifest(tmp_path / "m.jsonl", [{"audio": "a.wav"}])
    args = ["encode", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"),
            "--teacher-cache", str(tmp_path / "cache")]
    assert main([*args, "--tokenizer", str(folder)]) == 2
    assert "has no semantic teacher; drop the option" in capsys.readouterr().err
    assert main([*args, "--features", str(folder)]) == 2
    assert "--teacher-cache goes with --tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
