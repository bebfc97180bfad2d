"""Samplers: schedules, solver accuracy and cost, classifier-free guidance, the sample() entry point."""

import math

import pytest
import torch

from lodit.config import from_dict
from lodit.errors import LoditError
from lodit.samplers import (
    SCHEDULES,
    SOLVERS,
    GuidanceConfig,
    SamplerConfig,
    guided_velocity,
    initial_noise,
    make_timesteps,
    sample,
)

# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniform", "shifted", "sway"])
@pytest.mark.parametrize("steps", [1, 7, 32])
def test_schedules_run_from_one_to_zero_strictly_decreasing(name, steps):
    grid = make_timesteps(name, steps, shift=3.0, sway=-1.0)
    assert grid.shape == (steps + 1,) and grid.dtype == torch.float64
    assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
    assert bool((grid[1:] < grid[:-1]).all())


def test_shifted_schedule_follows_the_formula():
    u = torch.linspace(1, 0, 11, dtype=torch.float64)
    expected = 3.0 * u / (1 + 2.0 * u)
    assert torch.allclose(make_timesteps("shifted", 10, shift=3.0), expected, atol=1e-15)
    assert torch.equal(make_timesteps("shifted", 10, shift=1.0), make_timesteps("uniform", 10))
    shifted = make_timesteps("shifted", 10, shift=3.0)
    assert shifted[0] - shifted[1] < shifted[-2] - shifted[-1]  # smaller steps near noise


@pytest.mark.parametrize("s", [-1.0, -0.5, 0.7])
def test_sway_schedule_is_f5_sway_converted_to_lodit_time(s):
    steps = 16
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)  # F5-TTS time: 0 = noise, 1 = data
    f5 = u + s * (torch.cos(math.pi / 2 * u) - 1 + u)
    # lodit time t = 1 - u, step k of both grids is the same point of the path
    assert torch.allclose(make_timesteps("sway", steps, sway=s), 1 - f5, atol=1e-14)


def test_sway_minus_one_is_a_sine_and_crowds_the_noise_end():
    grid = make_timesteps("sway", 8, sway=-1.0)
    assert torch.allclose(grid, torch.sin(math.pi / 2 * torch.linspace(1, 0, 9, dtype=torch.float64)))
    assert grid[0] - grid[1] < grid[-2] - grid[-1]


def test_bad_schedule_settings_are_user_errors():
    assert SCHEDULES.names() == ["shifted", "sway", "uniform"]
    with pytest.raises(LoditError, match="time schedule"):
        make_timesteps("cosine", 10)
    with pytest.raises(LoditError, match="monotone"):
        make_timesteps("sway", 10, sway=-2.0)  # F5's curve turns back for s < -1
    with pytest.raises(LoditError, match="steps"):
        make_timesteps("uniform", 0)
    with pytest.raises(LoditError, match="shift"):
        make_timesteps("shifted", 10, shift=-1.0)


# --- solver accuracy -------------------------------------------------------------------------

# dx/dt = (A + B·t)·x has the closed form x(0) = x(1)·exp(-(A + B/2)).
A, B = 1.0, 1.0


def _linear_velocity(x, t):
    return (A + B * t).reshape(-1, 1, 1) * x


def _linear_problem():
    x1 = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x1, x1 * math.exp(-(A + B / 2))


def _error(name, steps, **options):
    x1, exact = _linear_problem()
    result = SOLVERS.get(name)(_linear_velocity, x1, make_timesteps("uniform", steps), **options)
    return (result.x0 - exact).abs().max().item(), result


@pytest.mark.parametrize(
    "name, order_ratio, band",
    [("euler", 2, (1.7, 2.3)), ("heun", 4, (3.4, 4.6)), ("midpoint", 4, (3.4, 4.6)), ("rk4", 16, (13.6, 18.4))],
)
def test_halving_the_step_cuts_the_error_by_the_methods_order(name, order_ratio, band):
    coarse, _ = _error(name, 16)
    fine, _ = _error(name, 32)
    assert band[0] <= coarse / fine <= band[1], f"{name}: error ratio {coarse / fine:.2f}, expected ~{order_ratio}"


def test_fixed_step_nfe_counts():
    steps = 10
    expected = {"euler": steps, "heun": 2 * steps, "midpoint": 2 * steps, "rk4": 4 * steps}
    for name, nfe in expected.items():
        _, result = _error(name, steps)
        assert result.nfe == nfe, name
        assert torch.equal(result.timesteps, make_timesteps("uniform", steps))


def test_adaptive_meets_its_tolerance_with_fewer_evaluations_than_rk4():
    tol = 1e-6
    _, exact = _linear_problem()
    error, result = _error("adaptive", 20, rtol=tol, atol=tol)
    assert ((result.x0 - exact).abs() / (tol + tol * exact.abs())).max() <= 1.0
    visited = result.timesteps
    assert visited[0] == 1.0 and visited[-1] == 0.0 and bool((visited[1:] < visited[:-1]).all())
    assert len(visited) != 21  # steps come from error control, not from the schedule
    rk4_steps = 1
    while _error("rk4", rk4_steps)[0] > error:
        rk4_steps *= 2
    assert result.nfe < 4 * rk4_steps
    looser, looser_result = _error("adaptive", 20, rtol=1e-3, atol=1e-3)
    assert looser > error and looser_result.nfe < result.nfe


def test_adaptive_reports_a_blown_up_velocity_and_bad_tolerances():
    x1, _ = _linear_problem()
    with pytest.raises(LoditError, match="not finite"):
        SOLVERS.get("adaptive")(lambda x, t: x / 0.0, x1, make_timesteps("uniform", 4))
    with pytest.raises(LoditError, match="tolerances"):
        SOLVERS.get("adaptive")(_linear_velocity, x1, make_timesteps("uniform", 4), rtol=0.0)


def test_trajectory_is_returned_on_request():
    x1, _ = _linear_problem()
    result = SOLVERS.get("heun")(_linear_velocity, x1, make_timesteps("uniform", 5), return_trajectory=True)
    assert result.trajectory.shape == (6, *x1.shape)
    assert torch.equal(result.trajectory[0], x1) and torch.equal(result.trajectory[-1], result.x0)


def test_sample_reaches_the_exact_data_of_a_gaussian_flow():
    # Data N(mu, sigma²) per channel: the exact flow-matching ODE maps noise z to mu + sigma·z,
    # along x_t = (1 - t)·mu + s(t)·z with s(t) = sqrt((1 - t)²·sigma² + t²).
    mu = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    sigma = torch.tensor([0.5, 0.3, 1.5], dtype=torch.float64)

    def exact_velocity(x, t, cond):
        t = t.reshape(-1, 1, 1)
        var = (1 - t) ** 2 * sigma**2 + t**2
        return -mu + (t - (1 - t) * sigma**2) / var * (x - (1 - t) * mu)

    noise = initial_noise((2, 5, 3), torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample(exact_velocity, noise, None, cfg=SamplerConfig(sampler="rk4", steps=32))
    assert torch.allclose(out.x0, mu + sigma * noise, atol=1e-5)


# --- Euler equals diffusers ------------------------------------------------------------------


def test_euler_matches_diffusers_flow_match_euler_scheduler():
    diffusers = pytest.importorskip("diffusers", reason="cross-check against diffusers' scheduler")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))

    def model_fn(x, t, cond):  # a nonlinear velocity field of x and t
        t_col = t.reshape(-1, 1, 1).expand(*x.shape[:2], 1)
        return net(torch.cat([x, t_col], dim=-1)) + cond

    steps, shift = 12, 3.0
    noise = initial_noise((2, 6, 4), torch.Generator().manual_seed(2))
    cond = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(3))

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    # our uniform grid without its final 0; the scheduler applies the same shift and appends 0
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist())
    x = noise.clone()
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            t = (timestep / scheduler.config.num_train_timesteps).repeat(x.shape[0])
            x = scheduler.step(model_fn(x, t, cond), timestep, x).prev_sample

    cfg = SamplerConfig(sampler="euler", steps=steps, schedule="shifted", shift=shift)
    ours = sample(model_fn, noise, cond, cfg=cfg)
    assert torch.allclose(ours.timesteps.float(), scheduler.sigmas, atol=1e-6)
    assert (ours.x0 - x).abs().max().item() < 1e-5
    assert ours.nfe == steps == len(scheduler.timesteps)


# --- classifier-free guidance ----------------------------------------------------------------


class ToyModel:
    """Velocity depending on x, t and a dict condition; records every forward's batch size."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x, t, cond):
        self.batch_sizes.append(x.shape[0])
        return cond["w"].reshape(-1, 1, 1) * x + cond["b"] + t.reshape(-1, 1, 1)


def _toy_inputs(batch=3):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 5, 2, generator=g)
    cond = {"w": torch.rand(batch, generator=g) + 0.5, "b": torch.randn(batch, 1, 2, generator=g)}
    uncond = {"w": torch.rand(batch, generator=g) - 0.5, "b": torch.randn(batch, 1, 2, generator=g)}
    return x, cond, uncond


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    x, cond, uncond = _toy_inputs()
    t = torch.full((3,), 0.4)
    model = ToyModel()
    v_c, v_u = model(x, t, cond), model(x, t, uncond)

    only_cond = guided_velocity(model, cond, uncond, GuidanceConfig(scale=1.0))
    assert torch.equal(only_cond(x, t), v_c)
    assert only_cond.model_calls == 1 and only_cond.guided_evaluations == 0
    assert torch.allclose(guided_velocity(model, cond, uncond, GuidanceConfig(scale=0.0))(x, t), v_u, atol=1e-6)

    guided = guided_velocity(model, cond, uncond, GuidanceConfig(scale=3.0))
    assert torch.allclose(guided(x, t), v_u + 3.0 * (v_c - v_u), atol=1e-5)
    assert guided.model_calls == 1 and model.batch_sizes[-1] == 6  # one forward on a doubled batch
    # rescale 0 is plain CFG
    plain = guided_velocity(model, cond, uncond, GuidanceConfig(scale=3.0, rescale=0.0))(x, t)
    assert torch.equal(plain, guided(x, t))


def test_cfg_rescale_matches_the_conditional_std():
    x, cond, uncond = _toy_inputs()
    t = torch.full((3,), 0.4)
    model = ToyModel()
    v_c, v_u = model(x, t, cond), model(x, t, uncond)
    plain = v_u + 5.0 * (v_c - v_u)
    full = guided_velocity(model, cond, uncond, GuidanceConfig(scale=5.0, rescale=1.0))(x, t)
    def std(v):
        return v.flatten(1).std(dim=1, correction=0)

    assert torch.allclose(std(full), std(v_c), atol=1e-5)
    assert torch.allclose(full / plain, (std(v_c) / std(plain)).reshape(-1, 1, 1).expand_as(full), atol=1e-4)
    half = guided_velocity(model, cond, uncond, GuidanceConfig(scale=5.0, rescale=0.5))(x, t)
    assert torch.allclose(half, 0.5 * full + 0.5 * plain, atol=1e-5)

    # with a padding mask only valid frames set the statistics
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    masked = guided_velocity(model, cond, uncond, GuidanceConfig(scale=5.0, rescale=1.0), mask=mask)(x, t)
    assert torch.allclose(masked[0, :3].std(correction=0), v_c[0, :3].std(correction=0), atol=1e-5)


def test_cfg_interval_guides_only_inside_it():
    x, cond, uncond = _toy_inputs()
    model = ToyModel()
    guided = guided_velocity(model, cond, uncond, GuidanceConfig(scale=4.0, interval=(0.0, 0.5)))
    outside = torch.full((3,), 0.8)
    assert torch.equal(guided(x, outside), model(x, outside, cond))
    inside = torch.full((3,), 0.3)
    v_c, v_u = model(x, inside, cond), model(x, inside, uncond)
    assert torch.allclose(guided(x, inside), v_u + 4.0 * (v_c - v_u), atol=1e-5)
    assert guided.guided_evaluations == 1 and guided.model_calls == 2

    # through sample(): 10 Euler steps at t = 1.0, 0.9, ..., 0.1 -> guided at 0.8 ... 0.1 only,
    # 0.8 included although float32(0.8) > 0.8 in float64
    cfg = SamplerConfig(steps=10, guidance=GuidanceConfig(scale=4.0, interval=(0.0, 0.8)))
    out = sample(ToyModel(), x, cond, uncond, cfg)
    assert out.nfe == 10 and out.model_calls == 10 and out.guided_evaluations == 8


def test_negative_prompt_and_unstackable_conditions():
    x, cond, _ = _toy_inputs()
    t = torch.full((3,), 0.6)
    negative = {"w": -cond["w"], "b": cond["b"] * 2}
    model = ToyModel()
    v = guided_velocity(model, cond, negative, GuidanceConfig(scale=2.0))(x, t)
    assert torch.allclose(v, 2 * model(x, t, cond) - model(x, t, negative), atol=1e-5)

    # a null condition the network spells as None cannot share a batch: two forwards instead
    def model_fn(x, t, text):
        return x * (0.0 if text is None else text.reshape(-1, 1, 1))

    text = torch.tensor([1.0, 2.0, 3.0])
    guided = guided_velocity(model_fn, text, None, GuidanceConfig(scale=1.0))
    assert torch.equal(guided(x, t), model_fn(x, t, text))  # scale 1 never needs the uncond
    with pytest.raises(LoditError, match="unconditional"):
        guided_velocity(model_fn, text, None, GuidanceConfig(scale=2.0))
    def call(x, t, c):
        return model_fn(x, t, c["text"])

    split = guided_velocity(call, {"text": text}, {"text": None}, GuidanceConfig(scale=2.0))
    assert torch.allclose(split(x, t), 2 * model_fn(x, t, text), atol=1e-6)
    assert split.model_calls == 2 and split.guided_evaluations == 1
    with pytest.raises(LoditError, match="interval"):
        guided_velocity(model, cond, negative, GuidanceConfig(scale=2.0, interval=(0.6, 0.2)))


# --- the sample() entry point ----------------------------------------------------------------


def test_same_seed_gives_the_same_samples_and_costs_are_reported():
    _, cond, uncond = _toy_inputs(batch=2)
    cfg = SamplerConfig(sampler="heun", steps=6, schedule="sway", guidance=GuidanceConfig(scale=3.0))

    def run(seed):
        noise = initial_noise((2, 5, 2), torch.Generator().manual_seed(seed))
        return sample(ToyModel(), noise, cond, uncond, cfg)

    first, second, other = run(11), run(11), run(12)
    assert torch.equal(first.x0, second.x0)
    assert not torch.allclose(first.x0, other.x0)
    assert first.nfe == 12 and first.model_calls == 12 and first.guided_evaluations == 12
    assert torch.equal(first.timesteps, make_timesteps("sway", 6, sway=-1.0))
    assert first.x0.shape == (2, 5, 2) and first.x0.dtype == torch.float32
    assert not first.x0.requires_grad


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "rk4", "adaptive"])
def test_every_sampler_runs_through_sample(name):
    x, cond, uncond = _toy_inputs()
    cfg = SamplerConfig(sampler=name, steps=4, guidance=GuidanceConfig(scale=2.0))
    out = sample(ToyModel(), x, cond, uncond, cfg, return_trajectory=True)
    assert out.x0.shape == x.shape and torch.isfinite(out.x0).all()
    assert out.trajectory.shape == (len(out.timesteps), *x.shape)
    assert out.model_calls == out.nfe  # CFG batched into one forward per evaluation


def test_sampler_config_loads_from_yaml_data():
    cfg = from_dict(
        SamplerConfig,
        {"sampler": "heun", "steps": 32, "schedule": "sway", "guidance": {"scale": 2, "interval": [0.1, 0.9]}},
        source="sample.yaml",
    )
    assert cfg.guidance == GuidanceConfig(scale=2.0, interval=(0.1, 0.9), rescale=0.0)
    with pytest.raises(LoditError, match="sampler"):
        sample(ToyModel(), torch.zeros(1, 2, 2), _toy_inputs(1)[1], cfg=SamplerConfig(sampler="ddim"))
