"""F3's representation encoder (RQ-MTP), lodit train-repr / encode --features, and the real-size
UniAudio-Token / F3 configs on the meta device."""

import numpy as np
import pytest
import torch

from lodit import cli
from lodit.config import load_config, load_yaml
from lodit.data.latent_cache import LatentCache, LatentCacheWriter
from lodit.latent_tokenizer.uniaudio import UniAudioToken
from lodit.latent_tokenizer.uniaudio_train import UniAudioTrainConfig
from lodit.repr.f3 import F3Config, F3Encoder, RandomProjectionQuantizer, load_f3
from lodit.repr.train import ReprTrainConfig, train_repr
from lodit.training.checkpoint import read_weights


def _periodic_latents(n: int, frames: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    """Predictable sequences: each clip cycles through a few random frames with a fixed period."""
    g = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(n):
        period = 3 + i % 3
        patterns = torch.randn(period, dim, generator=g)
        clips.append(patterns[torch.arange(frames) % period] + 0.05 * torch.randn(frames, dim, generator=g))
    return clips


def _cache(folder, clips) -> LatentCache:
    producer = {"name": "synthetic", "config_hash": "0", "latent_dim": clips[0].shape[1], "frame_rate": 25.0,
                "sample_rate": 16000}
    with LatentCacheWriter(folder, producer=producer) as writer:
        for i, clip in enumerate(clips):
            writer.add(f"clip{i}", clip, {"caption": f"clip {i}" if i % 2 else ""})
    return LatentCache(folder)


def test_rq_mtp_targets_are_fixed_by_the_seed():
    a = RandomProjectionQuantizer(8, 4, 32, seed=7)
    b = RandomProjectionQuantizer(8, 4, 32, seed=7)
    c = RandomProjectionQuantizer(8, 4, 32, seed=8)
    x = torch.randn(2, 10, 8)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a(x), b(x)) and not torch.equal(a.projection, c.projection)
    assert a(x).shape == (2, 10) and int(a(x).max()) < 32


def test_rq_mtp_loss_falls_on_a_tiny_run():
    torch.manual_seed(0)
    model = F3Encoder(F3Config(latent_dim=6, width=32, depth=2, heads=2, horizon=3, codebook_size=16))
    latents = torch.stack(_periodic_latents(6, 30, 6))
    mask = torch.ones(6, 30, dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, parts = model(latents, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(parts["rq_mtp"].detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert model.accuracy(latents, mask) > 0.6
    # causal: features at t do not change when later frames do
    model.eval()
    changed = latents.clone()
    changed[:, 20:] += 5
    assert torch.allclose(model.features(latents)[:, :20], model.features(changed)[:, :20], atol=1e-5)


def test_train_repr_targets_survive_resume_and_encode_features(tmp_path):
    cache = _cache(tmp_path / "cache", _periodic_latents(4, 40, 8))
    config = load_config(ReprTrainConfig, "configs/repr/f3_tiny.yaml",
                         [f"data.cache={cache.root}", "training.max_steps=6", "training.checkpoint_every=2",
                          "training.batch_size=2", "f3_repr.width=32", "data.segment_frames=20"])
    run = tmp_path / "run"
    first = train_repr(config, run, stop_at=2)
    assert first.final is None
    saved = [read_weights(first.checkpoint / "model.safetensors")]
    done = train_repr(config, run)
    assert done.step == 6 and done.final is not None
    saved.append(read_weights(done.final / "model.safetensors"))
    expected = RandomProjectionQuantizer(8, 16, 64, seed=1234)
    for weights in saved:
        assert torch.equal(weights["targets.projection"], expected.projection)
        assert torch.equal(weights["targets.codebook"], expected.codebook)
    model = load_f3(done.final)
    assert torch.allclose(model.latent_mean, cache.mean) and model.config.latent_dim == 8


def test_cli_train_repr_and_encode_features(tmp_path):
    from lodit.data.audio import save_audio
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    ae = Tokenizer.from_config(load_yaml("configs/tokenizer/tiny.yaml")["tokenizer"]).save_pretrained(tmp_path / "ae")
    rows = []
    for i in range(3):
        t = np.arange(16000) / 16000
        save_audio(
            tmp_path / f"{i}.wav",
            torch.from_numpy((0.3 * np.sin(2 * np.pi * 300 * (i + 1) * t)).astype(np.float32))[None],
            16000,
        )
        rows.append(f'{{"audio": "{i}.wav", "caption": "tone {i}"}}')
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    assert (
        cli.main(
            [
                "encode",
                "--tokenizer",
                str(ae),
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "train-repr",
                "--config",
                "configs/repr/f3_tiny.yaml",
                "--cache",
                str(tmp_path / "c"),
                "--out",
                str(tmp_path / "run"),
                "training.max_steps=2",
                "data.segment_frames=10",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "encode",
                "--features",
                str(tmp_path / "run" / "final"),
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "f"),
                "--no-progress",
            ]
        )
        == 0
    )
    features = LatentCache(tmp_path / "f")
    assert features.dim == 64 and features.producer["content"] == "f3_features" and len(features) == 3
    assert features[0].latents.shape == (25, 64)
    # a latent cache is not a model folder: one line, exit 2
    assert (
        cli.main(
            ["encode", "--features", str(tmp_path / "c"), "--manifest", str(manifest), "--out", str(tmp_path / "g")]
        )
        == 2
    )


@pytest.mark.parametrize("path", ["configs/uniaudio/large_v3.yaml", "configs/uniaudio/tiny.yaml"])
def test_uniaudio_configs_build_on_the_meta_device(path):
    config = load_config(UniAudioTrainConfig, path)
    with torch.device("meta"):
        model = UniAudioToken(config.uniaudio)
    if "large" in path:
        assert model.quantizer.codebook.shape == (8192, 1280)
        assert model.sae.gate[0].in_features == 2560 and model.sae.gate[2].out_features == 1280
        assert model.sae.adapter[0].in_features == 1280 and model.sae.adapter[2].p == 0.1
        assert config.uniaudio.codebook.decay == 0.95 and config.uniaudio.codebook.commitment == 0.25
        assert config.uniaudio.layers == (3, 3)  # blocks 4..32 fine-tuned on the cached output of block 3
        assert len(model.top.layers) == 29 and model.top.layers[0].fc1.weight.shape == (5120, 1280)


def test_f3_large_config_builds_on_the_meta_device():
    config = load_config(ReprTrainConfig, "configs/repr/f3_large.yaml", ["f3_repr.latent_dim=128"])
    with torch.device("meta"):
        model = F3Encoder(config.f3_repr)
    assert sum(p.numel() for p in model.parameters()) > 50_000_000
    assert len(model.heads) == config.f3_repr.horizon


def test_text_supervision_only_where_captions_exist():
    torch.manual_seed(0)
    model = F3Encoder(
        F3Config(latent_dim=4, width=16, depth=1, heads=2, horizon=2, codebook_size=8, text_weight=0.5, text_dim=6)
    )
    latents, mask = torch.randn(3, 10, 4), torch.ones(3, 10, dtype=torch.bool)
    text = torch.randn(3, 6)
    none = torch.zeros(3, dtype=torch.bool)
    total, parts = model(latents, mask, text, none)
    assert set(parts) == {"rq_mtp"} and torch.equal(total, parts["rq_mtp"])
    some = torch.tensor([True, False, True])
    total, parts = model(latents, mask, text, some)
    assert torch.allclose(total, parts["rq_mtp"] + 0.5 * parts["text"])
    changed = text.clone()
    changed[1] = 100.0  # the clip without a caption: its text embedding plays no part
    assert torch.allclose(model(latents, mask, changed, some)[1]["text"], parts["text"])
