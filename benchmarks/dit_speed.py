"""Training-step speed of lodit's DiT against diffusers' ``StableAudioDiTModel``, plus MFU.

Both models get the same width, depth, heads (no grouped KV in diffusers), cross-attention width,
sequence length, batch, RoPE over the full head dim and a 4·width gated (SwiGLU) MLP hidden size;
both train with the same loss (MSE to a random target) and the same ``torch.optim.AdamW``. Timed
steps alternate between the two models in rounds, so drift on a shared machine hits both alike.

Reported per model: step time (median), latent frames/s, achieved model FLOP/s and MFU against
the dense matmul rate measured in this same run (square ``torch.mm``, same threads and dtype).

Model FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
with SDPA forced to its math kernel (the CPU flash kernel is not counted by the flop counter);
for lodit that count is cross-checked against the analytic ``3 × dit_forward_flops``.

Structural differences that stay (each model is benchmarked as it is built):
- lodit: adaLN-Zero modulation per block, QK-norm (RMSNorm), a learned null text token, global
  conditioning vector (time + pooled text + duration);
- diffusers: a prepended global token (sequence T + 1), 1×1 conv pre/post-processing, a 2-layer
  MLP over the text states, per-block affine LayerNorms and separate Q/K/V projections.

Usage::

    python benchmarks/dit_speed.py                       # CPU, fp32, 2 threads, width 512 depth 6
    python benchmarks/dit_speed.py --device cuda --preset s --frames 1500 --batch 16   # bf16
"""

from __future__ import annotations

import argparse
import json
import platform
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

from lodit.dit.model import DiT, dit_training_flops  # noqa: E402
from lodit.dit.presets import dit_config_from_preset  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=None, help="lodit DiT preset (tiny/s/m/l); default: width 512, depth 6")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--frames", type=int, default=400, help="latent frames per sample")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="timed steps are split into this many alternating rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul size for the peak rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def lodit_config(args):
    base = {"width": 512, "depth": 6, "heads": 8} if args.preset is None else {}
    for key in ("width", "depth", "heads"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    # mlp_ratio 6 with the 2/3 gated convention = a 4·width SwiGLU hidden, as diffusers builds it.
    return dit_config_from_preset(
        args.preset or "s", latent_dim=args.latent_dim, text_dim=args.text_dim, mlp="swiglu",
        mlp_ratio=6.0, **base,
    )


def build_models(args, device):
    from diffusers import StableAudioDiTModel
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cfg = lodit_config(args)
    torch.manual_seed(args.seed)
    ours = DiT(cfg).to(device)
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
    return cfg, ours, theirs, rotary


def make_batch(args, cfg, device):
    g = torch.Generator().manual_seed(args.seed)
    b, t, l = args.batch, args.frames, args.text_tokens
    text_mask = torch.arange(l)[None, :] < torch.randint(l // 2, l + 1, (b, 1), generator=g)
    batch = {
        "x": torch.randn(b, t, cfg.latent_dim, generator=g),
        "target": torch.randn(b, t, cfg.latent_dim, generator=g),
        "t": torch.rand(b, generator=g),
        "text": torch.randn(b, l, cfg.text_dim, generator=g),
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
    """One model, its loss and its AdamW; ``step()`` returns the wall time of one training step."""

    def __init__(self, name, model, loss_fn, device, autocast):
        self.name, self.model, self.loss_fn = name, model, loss_fn
        self.device, self.autocast = device, autocast
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
        self.times: list[float] = []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self) -> float:
        self._sync()
        start = time.perf_counter()
        with self.autocast():
            loss = self.loss_fn()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        return time.perf_counter() - start

    def count_flops(self) -> int:
        """Forward + backward FLOPs of one step (math SDPA so attention is counted)."""
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            with self.autocast():
                loss = self.loss_fn()
            loss.backward()
        self.model.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def matmul_rate(n, device, dtype, repeats=8) -> float:
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

    cfg, ours, theirs, rotary = build_models(args, device)
    batch = make_batch(args, cfg, device)
    trainers = [
        Trainer("lodit", ours, lambda: lodit_loss(ours, batch), device, autocast),
        Trainer("diffusers", theirs, lambda: diffusers_loss(theirs, batch, rotary), device, autocast),
    ]
    flops = {tr.name: tr.count_flops() for tr in trainers}
    analytic = args.batch * dit_training_flops(cfg, args.frames, args.text_tokens)

    for tr in trainers:
        for _ in range(args.warmup):
            tr.step()
    mm_dtype = torch.bfloat16 if on_cuda else torch.float32
    mm_size = args.matmul_size or (8192 if on_cuda else 2048)
    peak = [matmul_rate(mm_size, device, mm_dtype)]
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for tr in trainers:
            tr.times += [tr.step() for _ in range(per_round)]
        peak.append(matmul_rate(mm_size, device, mm_dtype))
    peak_rate = statistics.median(peak)

    rows = {}
    for tr in trainers:
        step = statistics.median(tr.times)
        achieved = flops[tr.name] / step
        rows[tr.name] = {
            "params_M": round(sum(p.numel() for p in tr.model.parameters()) / 1e6, 2),
            "step_s": round(step, 4),
            "frames_per_s": round(args.batch * args.frames / step, 1),
            "train_GFLOP_per_step": round(flops[tr.name] / 1e9, 2),
            "achieved_GFLOP_s": round(achieved / 1e9, 2),
            "mfu": round(achieved / peak_rate, 3),
        }
    result = {
        "device": device.type if not on_cuda else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": "bf16 autocast" if on_cuda else "fp32",
        "torch": torch.__version__,
        "config": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.heads, "latent_dim": cfg.latent_dim,
                   "text_dim": cfg.text_dim, "text_tokens": args.text_tokens, "frames": args.frames,
                   "batch": args.batch, "mlp_hidden": cfg.mlp_hidden},
        "matmul": {"size": mm_size, "dtype": str(mm_dtype).replace("torch.", ""),
                   "GFLOP_s": round(peak_rate / 1e9, 1)},
        "lodit_flops_analytic_vs_counted": round(analytic / flops["lodit"], 4),
        "models": rows,
        "speedup_frames_per_s": round(rows["lodit"]["frames_per_s"] / rows["diffusers"]["frames_per_s"], 3),
    }
    print(json.dumps(result, indent=2))
    print()
    print("| model | params (M) | step (s) | latent frames/s | GFLOP/step | achieved GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params_M']} | {r['step_s']} | {r['frames_per_s']} | "
              f"{r['train_GFLOP_per_step']} | {r['achieved_GFLOP_s']} | {r['mfu']:.1%} |")
    print(f"\nlodit / diffusers throughput: {result['speedup_frames_per_s']}x; "
          f"dense matmul {result['matmul']['GFLOP_s']} GFLOP/s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
