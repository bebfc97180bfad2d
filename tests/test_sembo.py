"""SemBo (semantic bottleneck): losses, training, save/load, and the PCA / channel-merge baselines."""

from __future__ import annotations

import math

import pytest
import torch

from lodit.config import from_dict
from lodit.errors import ConfigError, LoditError
from lodit.latent_tokenizer.sembo import (
    ChannelMerge,
    PCABaseline,
    SemBo,
    SemBoConfig,
    cosine_gram,
    normalized_reconstruction_loss,
    sembo_loss,
    time_relation_loss,
)

S = 1 / math.sqrt(2)


def _structured_features(batch=8, frames=32, dim=64, rank=6, seed=0):
    """Teacher-like features: smooth low-rank trajectories, an offset, and a little noise."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, dim, generator=gen)
    walk = 0.3 * torch.cumsum(torch.randn(batch, frames, rank, generator=gen), dim=1)
    latent = walk + torch.randn(batch, 1, rank, generator=gen)
    return (
        latent @ basis + 0.5 * torch.randn(dim, generator=gen) + 0.05 * torch.randn(batch, frames, dim, generator=gen)
    )


# --------------------------------------------------------------------------- losses


def test_time_relation_loss_hand_example():
    low = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # unit: e1, e2, (e1 + e2)/sqrt2
    high = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])
    torch.testing.assert_close(cosine_gram(low)[0], torch.tensor([[1, 0, S], [0, 1, S], [S, S, 1]]))
    torch.testing.assert_close(cosine_gram(high)[0], torch.tensor([[1, S, 0], [S, 1, 0], [0, 0, 1.0]]))
    # G_low - G_high = [[0, -s, s], [-s, 0, s], [s, s, 0]]: six entries of s^2 = 1/2 over 9.
    torch.testing.assert_close(time_relation_loss(low, high), torch.tensor(3.0 / 9.0))
    # Masking the third frame keeps the top-left 2x2 block: two entries of 1/2 over 4.
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(time_relation_loss(low, high, mask), torch.tensor(1.0 / 4.0))
    torch.testing.assert_close(time_relation_loss(low, high, mask), time_relation_loss(low[:, :2], high[:, :2]))


def test_time_relation_loss_ignores_per_frame_scale_and_stops_high_gradient():
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(2, 5, 4, generator=gen)
    high = torch.randn(2, 5, 12, generator=gen)
    reference = time_relation_loss(low, high)
    scale_low = torch.rand(2, 5, 1, generator=gen) * 10 + 0.1
    scale_high = torch.rand(2, 5, 1, generator=gen) * 10 + 0.1
    torch.testing.assert_close(time_relation_loss(low * scale_low, high), reference)
    torch.testing.assert_close(time_relation_loss(low, high * scale_high), reference)

    low.requires_grad_(True)
    high.requires_grad_(True)
    time_relation_loss(low, high).backward()
    assert low.grad is not None and low.grad.abs().sum() > 0
    assert high.grad is None


def test_normalized_reconstruction_loss_values_and_mask():
    restored = torch.tensor([[[3.0, 4.0]]])
    target = torch.tensor([[[4.0, 3.0]]])
    # (0.6, 0.8) vs (0.8, 0.6): squared differences 0.04 + 0.04 over 2 channels.
    torch.testing.assert_close(normalized_reconstruction_loss(restored, target), torch.tensor(0.04))
    torch.testing.assert_close(normalized_reconstruction_loss(restored * 7, target), torch.tensor(0.04))
    padded_r = torch.cat([restored, torch.tensor([[[1.0, 0.0]]])], dim=1)
    padded_t = torch.cat([target, torch.tensor([[[0.0, 1.0]]])], dim=1)
    mask = torch.tensor([[True, False]])
    torch.testing.assert_close(normalized_reconstruction_loss(padded_r, padded_t, mask), torch.tensor(0.04))

    total, parts = sembo_loss(restored[..., :1], restored, target, lambda_rec=1e3)
    torch.testing.assert_close(parts["rec"], torch.tensor(0.04))
    torch.testing.assert_close(total, 1e3 * parts["rec"] + parts["tr"])


# --------------------------------------------------------------------------- SemBo


def test_sembo_default_sizes_and_shapes():
    model = SemBo()
    compressor_params = sum(p.numel() for p in model.compressor.parameters())
    assert compressor_params == 1280 * 512 + 512 + 512 * 128 + 128  # the paper's ~0.72 M
    assert sum(p.numel() for p in model.restorer.parameters()) == 128 * 512 + 512 + 512 * 1280 + 1280
    small = SemBo(SemBoConfig(in_dim=48, hidden_dim=24, low_dim=8))
    h = torch.randn(2, 7, 48)
    z_low, restored = small(h)
    assert z_low.shape == (2, 7, 8) and restored.shape == (2, 7, 48)
    torch.testing.assert_close(small.restore(small.compress(h)), restored)
    with pytest.raises(ConfigError, match="low_dim must be at least 1"):
        from_dict(SemBoConfig, {"low_dim": 0}, source="sembo.yaml")


def test_sembo_training_reduces_both_losses():
    torch.manual_seed(0)
    h = _structured_features()
    model = SemBo(SemBoConfig(in_dim=64, hidden_dim=32, low_dim=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        _, start = model.loss(h)
    for _ in range(200):
        loss, _ = model.loss(h)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, end = model.loss(h)
    assert end["rec"] < 0.05 * start["rec"]  # observed: ~0.0015x
    assert end["tr"] < 0.6 * start["tr"]  # observed: ~0.35x


def test_sembo_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = SemBo(SemBoConfig(in_dim=32, hidden_dim=16, low_dim=4, lambda_rec=10.0))
    folder = model.save_pretrained(tmp_path / "sembo")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    loaded = SemBo.from_pretrained(folder)
    assert loaded.config == model.config
    h = torch.randn(1, 5, 32)
    torch.testing.assert_close(loaded(h)[0], model(h)[0])
    with pytest.raises(LoditError, match="config.json: not found"):
        SemBo.from_pretrained(tmp_path / "nothing")


# --------------------------------------------------------------------------- baselines


def test_pca_reconstructs_low_rank_input_exactly():
    gen = torch.Generator().manual_seed(0)
    rank, dim = 5, 40
    features = torch.randn(300, rank, generator=gen) @ torch.randn(rank, dim, generator=gen) + torch.randn(
        dim, generator=gen
    )
    pca = PCABaseline(low_dim=8).fit(features)
    z = pca.compress(features)
    assert z.shape == (300, 8) and pca.components.shape == (8, dim)
    torch.testing.assert_close(pca.restore(z), features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(8), rtol=0, atol=1e-5)
    # (B, T, D) input with a mask: padded frames are left out of the fit.
    frames = features[:40].reshape(4, 10, dim)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, 8:] = False
    garbage = frames.clone()
    garbage[:, 8:] = 1e6
    masked = PCABaseline(low_dim=5).fit(garbage, mask)
    z_low, restored = masked(frames)
    assert z_low.shape == (4, 10, 5) and restored.shape == (4, 10, dim)
    torch.testing.assert_close(restored, frames, rtol=1e-3, atol=1e-3)
    with pytest.raises(LoditError, match="needs at least 8 frames"):
        PCABaseline(low_dim=8).fit(features[:4])


def test_channel_merge_shapes_and_values():
    merge = ChannelMerge(in_dim=6, low_dim=2)
    h = torch.tensor([[[1.0, 2.0, 3.0, 10.0, 20.0, 30.0]]])
    z_low, restored = merge(h)
    assert z_low.tolist() == [[[2.0, 20.0]]]
    assert restored.tolist() == [[[2.0, 2.0, 2.0, 20.0, 20.0, 20.0]]]
    assert ChannelMerge(1280, 128).compress(torch.zeros(3, 4, 1280)).shape == (3, 4, 128)
    with pytest.raises(LoditError, match="in_dim=1280, low_dim=100"):
        ChannelMerge(1280, 100)
