"""The DiT network: shapes, identity-at-init, masking, null text, patching, skips, checkpointing,
RoPE, presets, FLOP count, and that a tiny DiT can fit a fixed batch."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lodit.config import from_dict
from lodit.dit.attention import RotaryEmbedding, apply_rotary
from lodit.dit.layers import DiTBlock, gated_hidden_size
from lodit.dit.model import DiT, DiTConfig, dit_forward_flops
from lodit.dit.presets import PRESETS, dit_config_from_preset
from lodit.errors import ConfigError, LoditError

TEXT_DIM = 24


def tiny_config(**overrides) -> DiTConfig:
    base = {"latent_dim": 8, "width": 32, "depth": 2, "heads": 4, "text_dim": TEXT_DIM, "num_tasks": 3}
    base.update(overrides)
    return DiTConfig(**base)


def randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers (adaLN, final, cross-attention output) random values, so
    the model's output depends on all of its inputs, as after some training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def make_inputs(cfg: DiTConfig, batch: int = 2, frames: int = 10, text_len: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(batch, text_len, dtype=torch.bool)
    text_mask[0, 3:] = False
    kwargs = {
        "text": torch.randn(batch, text_len, cfg.text_dim, generator=gen),
        "text_mask": text_mask,
        "task": torch.arange(batch) % max(cfg.num_tasks, 1),
        "duration": torch.full((batch,), 4.0),
    }
    if cfg.frame_cond_dim:
        kwargs["frame_cond"] = torch.randn(batch, frames, cfg.frame_cond_dim, generator=gen)
    x = torch.randn(batch, frames, cfg.latent_dim, generator=gen)
    t = torch.rand(batch, generator=gen)
    return x, t, kwargs


def build(cfg: DiTConfig, seed: int = 0, randomize: bool = True) -> DiT:
    torch.manual_seed(seed)
    model = DiT(cfg).eval()
    return randomize_zero_init(model, seed) if randomize else model


@pytest.mark.parametrize("latent_dim", [16, 128, 1280])
def test_same_config_serves_any_latent_width(latent_dim):
    cfg = dit_config_from_preset("tiny", text_dim=TEXT_DIM).with_latent_dim(latent_dim)
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg, frames=7)
    out = model(x, t, **{k: v for k, v in kwargs.items() if k != "task"})
    assert out.shape == (2, 7, latent_dim)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_output_is_exactly_zero_at_init():
    cfg = tiny_config(long_skips=True, depth=4, patch_size=2, frame_cond_dim=3)
    model = build(cfg, randomize=False)
    x, t, kwargs = make_inputs(cfg, frames=9)
    out = model(x, t, **kwargs)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


def test_adaln_zero_block_is_identity_at_init():
    cfg = tiny_config()
    block = DiTBlock(cfg.width, cfg.heads, mlp_hidden=cfg.mlp_hidden, mlp="geglu", qk_norm=True,
                     text_dim=TEXT_DIM, backend="sdpa", dropout=0.0)
    h = torch.randn(2, 6, cfg.width)
    cond = torch.randn(2, cfg.width)
    text = torch.randn(2, 4, TEXT_DIM)
    rotary = RotaryEmbedding(cfg.head_dim).for_length(6, h.device)
    out = block(h, cond, rotary, None, text, None)
    assert torch.equal(out, h)


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_padding_frames_do_not_change_valid_outputs(patch_size):
    cfg = tiny_config(patch_size=patch_size, frame_cond_dim=3)
    model = build(cfg)
    valid = 9
    x, t, kwargs = make_inputs(cfg, batch=1, frames=valid)
    reference = model(x, t, **kwargs)

    extra = 6  # garbage frames appended, then masked out
    gen = torch.Generator().manual_seed(1)
    x_padded = torch.cat((x, 100 * torch.randn(1, extra, cfg.latent_dim, generator=gen)), dim=1)
    padded_kwargs = dict(kwargs)
    padded_kwargs["frame_cond"] = torch.cat(
        (kwargs["frame_cond"], 100 * torch.randn(1, extra, 3, generator=gen)), dim=1
    )
    mask = torch.arange(valid + extra)[None, :] < valid
    out = model(x_padded, t, mask=mask, **padded_kwargs)
    assert out.shape == (1, valid + extra, cfg.latent_dim)
    torch.testing.assert_close(out[:, :valid], reference, atol=1e-5, rtol=1e-4)


def test_padded_batch_matches_samples_run_alone():
    cfg = tiny_config()
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg, batch=2, frames=12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    out = model(x, t, mask=mask, **kwargs)
    alone = model(x[1:, :8], t[1:], **{k: v[1:] for k, v in kwargs.items()})
    torch.testing.assert_close(out[1:, :8], alone, atol=1e-5, rtol=1e-4)


def test_null_text_is_finite_and_equals_no_text():
    cfg = tiny_config()
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg)
    no_valid_token = dict(kwargs, text_mask=torch.zeros_like(kwargs["text_mask"]))
    out_null = model(x, t, **no_valid_token)
    assert torch.isfinite(out_null).all()
    out_none = model(x, t, **dict(kwargs, text=None, text_mask=None))
    torch.testing.assert_close(out_null, out_none, atol=1e-6, rtol=1e-5)
    # Dropping one sample's text leaves the other sample's output untouched.
    mixed_mask = kwargs["text_mask"].clone()
    mixed_mask[0] = False
    out_mixed = model(x, t, **dict(kwargs, text_mask=mixed_mask))
    out_full = model(x, t, **kwargs)
    torch.testing.assert_close(out_mixed[1], out_full[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_mixed[0], out_null[0], atol=1e-6, rtol=1e-5)


def test_text_steers_the_output_after_a_few_training_steps():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = DiT(cfg)
    x, t, kwargs = make_inputs(cfg)
    other_text = dict(kwargs, text=torch.randn_like(kwargs["text"]))
    target = torch.randn_like(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        loss = F.mse_loss(model(x, t, **kwargs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        difference = (model(x, t, **kwargs) - model(x, t, **other_text)).abs().max()
    assert difference > 1e-3


def test_global_conditions_each_change_the_output():
    cfg = tiny_config()
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg)
    base = model(x, t, **kwargs)
    variants = {
        "t": ((x, 1 - t), kwargs),
        "duration": ((x, t), dict(kwargs, duration=kwargs["duration"] + 3)),
        "task": ((x, t), dict(kwargs, task=(kwargs["task"] + 1) % 3)),
    }
    for name, (args, kw) in variants.items():
        assert not torch.allclose(model(*args, **kw), base, atol=1e-4), name


@pytest.mark.parametrize("patch_size", [1, 2, 4])
@pytest.mark.parametrize("frames", [1, 7, 13])
def test_patch_sizes_with_frames_not_divisible(patch_size, frames):
    cfg = tiny_config(patch_size=patch_size, frame_cond_dim=2)
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg, frames=frames)
    out = model(x, t, **kwargs)
    assert out.shape == (2, frames, cfg.latent_dim)
    assert torch.isfinite(out).all()


def test_gradient_checkpointing_matches_plain_backward():
    cfg = tiny_config(depth=5, long_skips=True, dropout=0.0)
    plain = build(cfg).train()
    checkpointed = build(dataclass_replace(cfg, grad_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t, kwargs = make_inputs(cfg)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    outputs, grads = [], []
    for model in (plain, checkpointed):
        out = model(x, t, mask=mask, **kwargs)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[0], outputs[1])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    # The long skips are wired (depth 5 -> 2 fusions) and carry gradient.
    assert len(plain.skip_fusions) == 2
    assert grads[0]["skip_fusions.4.proj.weight"][:, cfg.width:].abs().sum() > 0


def test_long_skips_start_as_identity_like_the_plain_model():
    cfg = tiny_config(depth=4)
    plain = build(cfg)
    skipped = build(dataclass_replace(cfg, long_skips=True), randomize=False)  # fusions = identity
    skipped.load_state_dict(plain.state_dict(), strict=False)
    x, t, kwargs = make_inputs(cfg)
    torch.testing.assert_close(skipped(x, t, **kwargs), plain(x, t, **kwargs))


def test_rope_scores_depend_only_on_relative_position():
    head_dim = 16
    rope = RotaryEmbedding(head_dim, theta=10000.0)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, head_dim, generator=gen)  # (B, N, H, hd)
    k = torch.randn(1, 1, 1, head_dim, generator=gen)

    def score(m, n):
        return (apply_rotary(q, rope(torch.tensor([float(m)]))) * apply_rotary(k, rope(torch.tensor([float(n)])))).sum()

    for shift in (1, 7, 123):
        torch.testing.assert_close(score(3, 10), score(3 + shift, 10 + shift), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(3, 10), score(3, 11), atol=1e-3)
    # Position 0 is no rotation; rotation preserves the norm.
    torch.testing.assert_close(apply_rotary(q, rope(torch.tensor([0.0]))), q)
    torch.testing.assert_close(apply_rotary(q, rope(torch.tensor([42.0]))).norm(), q.norm())


def test_qk_norm_normalises_each_head_and_applies_the_learned_gains(monkeypatch):
    import lodit.dit.attention as attention_module

    torch.manual_seed(0)
    attn = attention_module.SelfAttention(32, 4, qk_norm=True)
    with torch.no_grad():
        attn.q_gain.copy_(torch.linspace(0.5, 2.0, 8))
        attn.k_gain.fill_(3.0)
    x = torch.randn(2, 5, 32)
    captured = {}

    def capture(q, k, v, key_mask=None, **_):
        captured.update(q=q, k=k)
        return v

    monkeypatch.setattr(attention_module, "attend", capture)
    attn(x)  # no RoPE: q and k leave the norm unrotated
    q, k = captured["q"], captured["k"]  # (B, H, N, hd)
    q_plain = q / attn.q_gain
    torch.testing.assert_close(q_plain.mean(-1), torch.zeros(2, 4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(q_plain.var(-1, unbiased=False), torch.ones(2, 4, 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(k.var(-1, unbiased=False), torch.full((2, 4, 5), 9.0), atol=1e-2, rtol=0)


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    cfg = tiny_config(patch_size=2)
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    reference = model(x, t, mask=mask, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, mask=mask, **kwargs)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_rope_off_uses_absolute_positions():
    cfg = tiny_config(rope=False, qk_norm=False, mlp="swiglu")
    model = build(cfg)
    x, t, kwargs = make_inputs(cfg)
    out = model(x, t, **kwargs)
    assert torch.isfinite(out).all()
    # A position-free model would map identical frames to identical outputs.
    same_frames = x[:, :1].expand_as(x).contiguous()
    out_same = model(same_frames, t, **kwargs)
    assert not torch.allclose(out_same[:, 0], out_same[:, -1], atol=1e-4)


PRESET_PARAMS_M = {"tiny": (0.2, 1.0), "s": (60, 80), "m": (190, 230), "l": (500, 600)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    cfg = dit_config_from_preset(name, latent_dim=128, num_tasks=3)
    with torch.device("meta"):
        model = DiT(cfg)
    low, high = PRESET_PARAMS_M[name]
    assert low <= model.num_parameters() / 1e6 <= high
    assert (cfg.width, cfg.depth, cfg.heads) == tuple(PRESETS[name][k] for k in ("width", "depth", "heads"))


def test_preset_sizes_match_the_issue():
    assert PRESETS["s"] == {"width": 512, "depth": 12, "heads": 8}
    assert PRESETS["m"] == {"width": 768, "depth": 16, "heads": 12}
    assert PRESETS["l"] == {"width": 1024, "depth": 24, "heads": 16}
    cfg = dit_config_from_preset("m", patch_size=2, latent_dim=1280)
    assert cfg.patch_size == 2 and cfg.width == 768 and cfg.latent_dim == 1280


def test_config_loads_through_the_typed_config_loader():
    cfg = from_dict(DiTConfig, {"width": 64, "heads": 4, "mlp": "swiglu", "patch_size": 2}, source="dit.yaml")
    assert cfg.mlp == "swiglu" and cfg.latent_dim == 0
    assert cfg.with_latent_dim(1280).latent_dim == 1280 and cfg.latent_dim == 0
    with pytest.raises(ConfigError, match="dit.yaml"):
        from_dict(DiTConfig, {"mlp": "relu"}, source="dit.yaml")


def test_gated_hidden_size_convention():
    assert gated_hidden_size(512, 4.0) == 1408
    assert gated_hidden_size(512, 6.0) == 2048
    assert gated_hidden_size(768, 4.0) == 2048


def test_config_errors_name_the_key():
    with pytest.raises(LoditError, match="latent_dim"):
        DiT(DiTConfig())
    with pytest.raises(LoditError, match="divisible"):
        DiT(tiny_config(width=30, heads=4))
    with pytest.raises(LoditError, match="unknown DiT preset"):
        dit_config_from_preset("xl")
    with pytest.raises(LoditError, match="widht"):
        dit_config_from_preset("s", widht=3)
    with pytest.raises(LoditError, match="attention_backend"):
        DiT(tiny_config(attention_backend="magic"))
    model = build(tiny_config())
    x, t, kwargs = make_inputs(tiny_config())
    with pytest.raises(LoditError, match="latent_dim=8"):
        model(torch.randn(2, 10, 9), t, **kwargs)
    with pytest.raises(LoditError, match="text_dim"):
        model(x, t, **dict(kwargs, text=torch.randn(2, 5, 7), text_mask=None))
    with pytest.raises(ValueError, match="duration"):
        model(x, t, **dict(kwargs, duration=None))


@pytest.mark.parametrize("backend", ["xformers", "flash_attn"])
def test_missing_optional_backend_is_a_clear_error(backend):
    module = "xformers" if backend == "xformers" else "flash_attn"
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed; the missing-package error cannot be triggered")
    with pytest.raises(LoditError, match=f"{backend}.*not installed.*sdpa"):
        DiT(tiny_config(attention_backend=backend))


@pytest.mark.parametrize("patch_size", [1, 2])
def test_analytic_flops_match_the_flop_counter(patch_size):
    cfg = tiny_config(width=64, depth=3, heads=4, latent_dim=16, patch_size=patch_size, long_skips=True)
    model = build(cfg)
    frames, text_len = 24, 5
    x, t, kwargs = make_inputs(cfg, batch=1, frames=frames, text_len=text_len)
    kwargs["text_mask"] = None
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, **kwargs)
    counted = counter.get_total_flops()
    analytic = dit_forward_flops(cfg, frames, text_len)
    assert abs(analytic - counted) / counted < 0.02


def test_tiny_dit_overfits_a_fixed_batch():
    cfg = tiny_config(width=64, depth=2, heads=4, latent_dim=8, patch_size=2, long_skips=True)
    torch.manual_seed(0)
    model = DiT(cfg).train()
    x, t, kwargs = make_inputs(cfg, batch=2, frames=16)
    target = torch.randn_like(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):  # typically reaches 1/10 in ~20 steps; stop as soon as it does
        loss = F.mse_loss(model(x, t, **kwargs), target)
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] / 10, losses[::10]


def dataclass_replace(cfg: DiTConfig, **changes) -> DiTConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)
