"""Training-step speed of lodit's DiT against diffusers' ``StableAudioDiTModel``, plus MFU.

Three models are timed in the same run, all at the same width, depth, heads (no grouped KV in
diffusers), cross-attention width, sequence length and batch, with RoPE over the full head dim:

- ``lodit=flops``: lodit's DiT with diffusers' MLP (SwiGLU, hidden 4·width), i.e. the same matmul
  FLOPs as diffusers: the kernel-efficiency comparison;
- ``lodit``: lodit's DiT as configured by default (SwiGLU, hidden ``mlp_ratio·width·2/3`` = 2.75·width
  rounded up, bias-free block projections), which does fewer FLOPs per frame than diffusers' 4·width
  gated MLP;
- ``diffusers``: ``StableAudioDiTModel`` as diffusers builds it.

All train with the same loss (MSE to a random target) and the same ``torch.optim.AdamW(fused=True)``
(the foreach AdamW is ~6x slower on CPU and would charge the bigger model for its optimizer).
Timed steps alternate between the models step by step (round robin), with a matmul-rate probe after
every round, so drift on a shared machine hits all models and the peak alike. Step times are
reported as median and minimum (and the median process CPU time, which at ``--threads 1`` is
immune to time-slicing by other jobs); throughput ratios and MFU are given from the median step (against
the median matmul probe) and from the fastest step (against the fastest probe): on a machine
shared with other jobs the second is the better estimate of what the code does undisturbed.

Reported per model: step time (median), latent frames/s, achieved model FLOP/s and MFU against
the dense matmul rate measured in this same run (square ``torch.mm``, same threads and dtype).

Model FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
with SDPA forced to its math kernel (the CPU flash kernel is not counted by the flop counter);
for lodit that count is cross-checked against the analytic ``3 × dit_forward_flops``.

Structural differences that stay (each model is benchmarked as it is built):
- lodit: adaLN-Zero modulation per block, QK-norm (LayerNorm over each head), a learned null text token, global
  conditioning vector (time + pooled text + duration);
- diffusers: a prepended global token (sequence T + 1), 1×1 conv pre/post-processing, a 2-layer
  MLP over the text states, per-block affine LayerNorms and separate Q/K/V projections.

Usage::

    python benchmarks/dit_speed.py                       # CPU, fp32, 2 threads, width 512 depth 4, 320 frames, batch 4
    python benchmarks/dit_speed.py --compile lodit       # torch.compile lodit's models (training.compile=true)
    python benchmarks/dit_speed.py --compile all         # ... and diffusers' too
    python benchmarks/dit_speed.py --device cuda --preset s --frames 1500 --batch 16   # bf16
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_name  # benchmarks/machine.py (this script's folder is on sys.path)

from lodit.dit.model import DiT, dit_training_flops
from lodit.dit.presets import dit_config_from_preset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=None, help="lodit DiT preset (tiny/s/m/l); default: width 512, depth 4")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--frames", type=int, default=320, help="latent frames per sample")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=12, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul size for the peak rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", choices=("none", "lodit", "all"), default="none",
                   help="torch.compile the lodit models only (what training.compile=true gives against an eager "
                        "diffusers model) or every model (compiled against compiled)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def lodit_config(args, *, match_diffusers_mlp: bool):
    base = {"width": 512, "depth": 4, "heads": 8} if args.preset is None else {}
    for key in ("width", "depth", "heads"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if match_diffusers_mlp:
        # mlp_ratio 6 with the 2/3 gated convention = a 4·width SwiGLU hidden, as diffusers builds it.
        base.update(mlp="swiglu", mlp_ratio=6.0)
    return dit_config_from_preset(
        args.preset or "s", latent_dim=args.latent_dim, text_dim=args.text_dim, **base
    )


def build_models(args, device):
    """``({name: (model, config)}, diffusers_rotary)``; the diffusers entry's config is lodit's matched one."""
    from diffusers import StableAudioDiTModel
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cfg = lodit_config(args, match_diffusers_mlp=True)
    default_cfg = lodit_config(args, match_diffusers_mlp=False)
    torch.manual_seed(args.seed)
    models = {"lodit=flops": (DiT(cfg).to(device), cfg), "lodit": (DiT(default_cfg).to(device), default_cfg)}
    theirs = StableAudioDiTModel(
        sample_size=args.frames, in_channels=cfg.latent_dim, num_layers=cfg.depth,
        attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
        num_key_value_attention_heads=cfg.heads, out_channels=cfg.latent_dim,
        cross_attention_dim=cfg.text_dim, cross_attention_input_dim=cfg.text_dim,
        global_states_input_dim=cfg.width, time_proj_dim=256,
    ).to(device)
    # The real Stable Audio rotates half of each head; rotate all of it, as lodit does.
    rotary = get_1d_rotary_pos_embed(cfg.head_dim, args.frames + 1, use_real=True, repeat_interleave_real=False)
    rotary = tuple(r.to(device) for r in rotary)
    models["diffusers"] = (theirs, cfg)
    return models, rotary


def make_batch(args, cfg, device):
    g = torch.Generator().manual_seed(args.seed)
    b, t, n_text = args.batch, args.frames, args.text_tokens
    text_mask = torch.arange(n_text)[None, :] < torch.randint(n_text // 2, n_text + 1, (b, 1), generator=g)
    batch = {
        "x": torch.randn(b, t, cfg.latent_dim, generator=g),
        "target": torch.randn(b, t, cfg.latent_dim, generator=g),
        "t": torch.rand(b, generator=g),
        "text": torch.randn(b, n_text, cfg.text_dim, generator=g),
        "text_mask": text_mask,
        "duration": torch.full((b,), 10.0),
        "global": torch.randn(b, 1, cfg.width, generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def lodit_loss(model, batch):
    out = model(batch["x"], batch["t"], text=batch["text"], text_mask=batch["text_mask"],
                duration=batch["duration"])
    return F.mse_loss(out.float(), batch["target"])


def diffusers_loss(model, batch, rotary):
    out = model(
        batch["x"].transpose(1, 2), batch["t"], encoder_hidden_states=batch["text"],
        global_hidden_states=batch["global"], rotary_embedding=rotary,
        encoder_attention_mask=batch["text_mask"], return_dict=False,
    )[0]  # (B, D, T): diffusers is channels-first
    return F.mse_loss(out.float(), batch["target"].transpose(1, 2))


class Trainer:
    """One model, its loss and its AdamW; ``step()`` returns the wall time of one training step.

    ``loss_fn`` may run a compiled model; ``eager_loss_fn`` (default: ``loss_fn``) runs the plain
    one, for the FLOP count.
    """

    def __init__(self, name, model, loss_fn, device, autocast, eager_loss_fn=None, compiled=False):
        self.name, self.model, self.loss_fn, self.compiled = name, model, loss_fn, compiled
        self.eager_loss_fn = eager_loss_fn or loss_fn
        self.device, self.autocast = device, autocast
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # process CPU time per step: robust to time-slicing at 1 thread

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self) -> float:
        self._sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        with self.autocast():
            loss = self.loss_fn()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        self.cpu_times.append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    def count_flops(self) -> int:
        """Forward + backward FLOPs of one step (math SDPA so attention is counted)."""
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            with self.autocast():
                loss = self.eager_loss_fn()
            loss.backward()
        self.model.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def matmul_rate(n, device, dtype, repeats) -> float:
    """Median FLOP/s of an ``n × n`` by ``n × n`` matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()

    models, rotary = build_models(args, device)
    cfg = models["lodit=flops"][1]
    batch = make_batch(args, cfg, device)
    trainers = []
    for name, (model, _) in models.items():
        compiled = args.compile == "all" or (args.compile == "lodit" and name != "diffusers")
        runner = torch.compile(model) if compiled else model
        if name == "diffusers":
            loss_fn, eager_loss_fn = (functools.partial(diffusers_loss, m, batch, rotary) for m in (runner, model))
        else:
            loss_fn, eager_loss_fn = (functools.partial(lodit_loss, m, batch) for m in (runner, model))
        trainers.append(Trainer(name, model, loss_fn, device, autocast, eager_loss_fn, compiled))
    flops = {tr.name: tr.count_flops() for tr in trainers}
    analytic = {
        name: args.batch * dit_training_flops(models[name][1], args.frames, args.text_tokens)
        for name in ("lodit=flops", "lodit")
    }

    for tr in trainers:
        for _ in range(args.warmup):
            tr.step()
    mm_dtype = torch.bfloat16 if on_cuda else torch.float32
    mm_size = args.matmul_size or (8192 if on_cuda else 2048)
    peak = [matmul_rate(mm_size, device, mm_dtype, repeats=3)]
    for _ in range(args.steps):
        for tr in trainers:
            tr.times.append(tr.step())
        peak.append(matmul_rate(mm_size, device, mm_dtype, repeats=3))
    peak_rate = statistics.median(peak)
    peak_best = max(peak)

    rows = {}
    for tr in trainers:
        step = statistics.median(tr.times)
        achieved = flops[tr.name] / step
        rows[tr.name] = {
            "compiled": tr.compiled,
            "mlp_hidden": models[tr.name][1].mlp_hidden if tr.name != "diffusers" else 4 * cfg.width,
            "params_M": round(sum(p.numel() for p in tr.model.parameters()) / 1e6, 2),
            "step_s": round(step, 4),
            "step_min_s": round(min(tr.times), 4),
            "step_cpu_time_s": round(statistics.median(tr.cpu_times[-len(tr.times):]), 4),
            "frames_per_s": round(args.batch * args.frames / step, 1),
            "train_GFLOP_per_step": round(flops[tr.name] / 1e9, 2),
            "achieved_GFLOP_s": round(achieved / 1e9, 2),
            "mfu": round(achieved / peak_rate, 3),
            # Contention-robust view: fastest step against the fastest matmul probe.
            "mfu_best_step": round(flops[tr.name] / min(tr.times) / peak_best, 3),
        }
    result = {
        "device": device.type if not on_cuda else torch.cuda.get_device_name(device),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "dtype": "bf16 autocast" if on_cuda else "fp32",
        "torch": torch.__version__,
        "config": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.heads, "latent_dim": cfg.latent_dim,
                   "text_dim": cfg.text_dim, "text_tokens": args.text_tokens, "frames": args.frames,
                   "batch": args.batch},
        "matmul": {"size": mm_size, "dtype": str(mm_dtype).replace("torch.", ""),
                   "GFLOP_s": round(peak_rate / 1e9, 1), "best_GFLOP_s": round(peak_best / 1e9, 1)},
        "analytic_vs_counted_flops": {name: round(value / flops[name], 4) for name, value in analytic.items()},
        "models": rows,
        "throughput_vs_diffusers": {
            name: round(rows[name]["frames_per_s"] / rows["diffusers"]["frames_per_s"], 3)
            for name in ("lodit=flops", "lodit")
        },
        "throughput_vs_diffusers_best_step": {
            name: round(rows["diffusers"]["step_min_s"] / rows[name]["step_min_s"], 3)
            for name in ("lodit=flops", "lodit")
        },
    }
    print(json.dumps(result, indent=2))
    print()
    ratios = result["throughput_vs_diffusers"]
    print(
        "| model | MLP hidden | params (M) | step median (s) | step min (s) | step CPU time (s) | latent frames/s "
        "| vs diffusers | GFLOP/step | achieved GFLOP/s | MFU | MFU best step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = f"{ratios[name]:.2f}x" if name in ratios else "1.00x"
        label = f"{name} (compiled)" if r["compiled"] else name
        print(
            f"| {label} | {r['mlp_hidden']} | {r['params_M']} | {r['step_s']} | {r['step_min_s']} "
            f"| {r['step_cpu_time_s']} | {r['frames_per_s']} | {ratio} "
            f"| {r['train_GFLOP_per_step']} | {r['achieved_GFLOP_s']} | {r['mfu']:.1%} | {r['mfu_best_step']:.1%} |"
        )
    best = result["throughput_vs_diffusers_best_step"]
    print("\nthroughput vs diffusers from the fastest step of each: "
          + ", ".join(f"{name} {value:.2f}x" for name, value in best.items()))
    print(f"dense {result['matmul']['dtype']} matmul ({mm_size}^3): {result['matmul']['GFLOP_s']} GFLOP/s median, "
          f"{result['matmul']['best_GFLOP_s']} best")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
