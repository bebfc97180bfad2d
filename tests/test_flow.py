"""The flow-matching objective: interpolation, target, masked loss, timestep samplers, CFG dropout."""

import math
from types import SimpleNamespace

import pytest
import torch

from lodit.config import from_dict
from lodit.dit.flow import (
    TIMESTEP_SAMPLERS,
    FlowMatching,
    FlowMatchingConfig,
    LatentStats,
    condition_dropout_mask,
    flow_matching_loss,
    interpolate,
    sample_timesteps,
    velocity_target,
)
from lodit.errors import ConfigError, LoditError
from lodit.samplers.schedules import length_dependent_shift, shift_time


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _latents(batch=3, frames=7, channels=4, seed=0):
    g = _gen(seed)
    return torch.randn(batch, frames, channels, generator=g), torch.randn(batch, frames, channels, generator=g)


def test_interpolation_endpoints_and_target_is_its_time_derivative():
    x0, eps = _latents()
    zeros, ones = torch.zeros(3), torch.ones(3)
    assert torch.equal(interpolate(x0, eps, zeros), x0)  # t = 0 is data
    assert torch.equal(interpolate(x0, eps, ones), eps)  # t = 1 is noise
    t = torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(interpolate(x0, eps, t)[1], 0.5 * x0[1] + 0.5 * eps[1])
    assert torch.equal(velocity_target(x0, eps), eps - x0)
    h = 1e-3
    finite_difference = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t)) / h
    assert torch.allclose(finite_difference, velocity_target(x0, eps), atol=1e-3)


def test_masked_loss_ignores_padding_and_averages_valid_elements():
    pred, target = _latents(seed=1)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    loss = flow_matching_loss(pred, target, mask)
    valid = mask.unsqueeze(-1).expand_as(pred)
    assert loss.item() == pytest.approx(((pred - target)[valid] ** 2).mean().item(), rel=1e-6)

    scrambled_pred, scrambled_target = pred.clone(), target.clone()
    scrambled_pred[~mask] = 1e3
    scrambled_target[~mask] = -7.0
    assert torch.equal(flow_matching_loss(scrambled_pred, scrambled_target, mask), loss)
    assert flow_matching_loss(pred, target).item() == pytest.approx(((pred - target) ** 2).mean().item())
    with pytest.raises(ValueError):
        flow_matching_loss(pred, target[:, :3], mask)


def test_logit_normal_timesteps_have_the_configured_logit_moments():
    for mean, std in [(0.0, 1.0), (0.5, 0.7)]:
        cfg = FlowMatchingConfig(timestep_sampler="logit_normal", logit_mean=mean, logit_std=std)
        t = sample_timesteps(cfg, 200_000, 100, _gen())
        assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1
        t = t.double()
        logits = torch.log(t / (1 - t))
        assert logits.mean().item() == pytest.approx(mean, abs=0.01)
        assert logits.std().item() == pytest.approx(std, abs=0.01)


def test_uniform_timesteps():
    t = sample_timesteps(FlowMatchingConfig(timestep_sampler="uniform"), 100_000, 100, _gen())
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    assert (t < 0.25).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_shift_formula_is_monotone_and_fixes_the_ends():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    for shift in (0.3, 1.0, 3.0):
        warped = shift_time(t, shift)
        assert warped[0] == 0 and warped[-1] == 1
        assert bool((warped[1:] > warped[:-1]).all())
        # noise-to-signal ratio t/(1-t) is scaled by exactly `shift`
        mid = t[1:-1]
        assert torch.allclose(warped[1:-1] / (1 - warped[1:-1]), shift * mid / (1 - mid))
    assert torch.equal(shift_time(t, 1.0), t)
    with pytest.raises(LoditError):
        shift_time(t, 0.0)


def test_shifted_sampler_warps_its_base_distribution():
    cfg = FlowMatchingConfig(timestep_sampler="shifted", shift=3.0, shift_base="uniform")
    t = sample_timesteps(cfg, 100_000, 100, _gen())
    # the median of U(0, 1) is 0.5, so the shifted median is shift_time(0.5, 3) = 0.75
    assert t.median().item() == pytest.approx(0.75, abs=0.01)
    base = sample_timesteps(FlowMatchingConfig(timestep_sampler="logit_normal"), 1000, 100, _gen())
    shifted = sample_timesteps(FlowMatchingConfig(timestep_sampler="shifted", shift=2.0), 1000, 100, _gen())
    assert torch.allclose(shifted.double(), shift_time(base.double(), 2.0), atol=1e-6)


def test_length_dependent_shift_grows_with_length_and_matches_its_formula():
    lengths = torch.tensor([16, 256, 1000, 4096, 8000])
    shift = length_dependent_shift(lengths)
    assert bool((shift[1:] > shift[:-1]).all())
    assert shift[1].item() == pytest.approx(math.exp(0.5))  # base_shift at base_seq_len
    assert shift[3].item() == pytest.approx(math.exp(1.15))  # max_shift at max_seq_len
    with pytest.raises(LoditError):
        length_dependent_shift(100, base_seq_len=512, max_seq_len=512)

    # shift_time with exp(mu) is diffusers' exponential time shift with sigma = 1
    diffusers = pytest.importorskip("diffusers", reason="diffusers cross-check")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    mu = math.log(shift[2].item())
    assert torch.allclose(shift_time(t, shift[2]), scheduler.time_shift(mu, 1.0, t), atol=1e-12)


def test_length_shift_sampler_uses_each_samples_valid_length():
    cfg = FlowMatchingConfig(timestep_sampler="length_shift", shift_base="uniform")
    short = sample_timesteps(cfg, 64, 50, _gen())
    long = sample_timesteps(cfg, 64, 4000, _gen())
    assert bool((long > short).all())  # same base draws, stronger shift towards noise
    per_sample = sample_timesteps(cfg, 2, torch.tensor([50, 4000]), _gen())
    base = sample_timesteps(FlowMatchingConfig(timestep_sampler="uniform"), 2, 0, _gen()).double()
    expected = shift_time(base, length_dependent_shift(torch.tensor([50, 4000])))
    assert torch.allclose(per_sample.double(), expected, atol=1e-6)


def test_condition_dropout_rate_and_determinism():
    n, p = 20_000, 0.2
    drop = condition_dropout_mask(n, p, _gen(3))
    assert drop.dtype == torch.bool and drop.shape == (n,)
    tolerance = 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations
    assert abs(drop.float().mean().item() - p) < tolerance
    assert torch.equal(drop, condition_dropout_mask(n, p, _gen(3)))
    assert not torch.equal(drop, condition_dropout_mask(n, p, _gen(4)))
    assert not condition_dropout_mask(100, 0.0, _gen()).any()
    assert condition_dropout_mask(100, 1.0, _gen()).all()
    with pytest.raises(LoditError):
        condition_dropout_mask(10, 1.5)
    flow = FlowMatching(FlowMatchingConfig(cond_dropout=p))
    assert torch.equal(flow.dropout_mask(n, _gen(3)), drop)


def test_training_inputs_are_consistent_normalised_and_seeded():
    raw, _ = _latents(batch=4, frames=9, channels=3, seed=5)
    raw = raw * torch.tensor([2.0, 0.5, 10.0]) + torch.tensor([1.0, -3.0, 0.0])
    stats = LatentStats(mean=[1.0, -3.0, 0.0], std=[2.0, 0.5, 10.0])
    flow = FlowMatching(FlowMatchingConfig(), stats)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    x_t, t, target = flow.training_inputs(raw, mask, _gen(7))
    assert x_t.shape == target.shape == raw.shape and t.shape == (4,)
    # x_t - t·(eps - x0) = x0, the normalised clean latent
    x0 = stats.normalize(raw)
    assert torch.allclose(x_t - t[:, None, None] * target, x0, atol=1e-5)
    assert torch.allclose(stats.denormalize(x0), raw, atol=1e-5)
    again = flow.training_inputs(raw, mask, _gen(7))
    assert torch.equal(again.x_t, x_t) and torch.equal(again.t, t) and torch.equal(again.target, target)
    assert not torch.equal(flow.training_inputs(raw, mask, _gen(8)).t, t)
    loss = flow.loss(torch.zeros_like(target), target, mask)
    assert loss.ndim == 0 and loss.item() > 0
    with pytest.raises(LoditError, match="channels"):
        stats.normalize(torch.zeros(1, 2, 5))
    from_cache = LatentStats.from_cache(SimpleNamespace(mean=stats.mean, std=stats.std))
    assert torch.equal(from_cache.normalize(raw), stats.normalize(raw))


def test_bad_names_and_values_are_user_errors():
    assert set(TIMESTEP_SAMPLERS.names()) == {"uniform", "logit_normal", "shifted", "length_shift"}
    with pytest.raises(LoditError, match="timestep sampler"):
        FlowMatching(FlowMatchingConfig(timestep_sampler="cosine"))
    with pytest.raises(LoditError):
        FlowMatching(FlowMatchingConfig(cond_dropout=-0.1))
    with pytest.raises(ConfigError, match="shift_base"):
        from_dict(FlowMatchingConfig, {"shift_base": "shifted"}, source="dit.yaml")
    cfg = from_dict(FlowMatchingConfig, {"timestep_sampler": "shifted", "shift": 3}, source="dit.yaml")
    assert cfg.shift == 3.0 and cfg.cond_dropout == 0.2
