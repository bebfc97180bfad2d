"""Tokenizer speed: encode / decode real-time factor of a tokenizer config on CPU (and GPU if present).

RTF here = seconds of audio processed per second of wall-clock time (higher is faster; 100 means
100x faster than real time). Encode and decode are timed separately on the same clips; "combined"
is audio seconds / (encode time + decode time). Each number is the median of ``--repeats`` timed
runs after ``--warmup`` untimed ones, under ``torch.inference_mode``, with ``--threads`` intra-op
threads on CPU; the last column is the fastest single encode+decode pair, which is what the
hardware does when nothing else competes for it (on a shared machine the median can be far lower:
intra-op threads that lose their core stall each other). Weights are randomly initialised: the
cost does not depend on their values.

    python benchmarks/tokenizer_speed.py                       # configs/tokenizer/default.yaml
    python benchmarks/tokenizer_speed.py --config configs/tokenizer/noise_norm_128.yaml --device cuda
    python benchmarks/tokenizer_speed.py --set tokenizer.decoder.depth=4   # try a variant

Prints a markdown table (with machine, versions and the command) for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py (this script's folder is on sys.path)

from lodit.config import apply_overrides, load_yaml
from lodit.latent_tokenizer.tokenizer import Tokenizer

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tokenizer" / "default.yaml"


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn()`` (CUDA work is synchronised before reading the clock)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure(tokenizer: Tokenizer, device: torch.device, batch: int, seconds: float, warmup: int, repeats: int):
    generator = torch.Generator().manual_seed(0)
    num_samples = int(seconds * tokenizer.sample_rate)
    wav = (0.1 * torch.randn(batch, 1, num_samples, generator=generator)).to(device)
    with torch.inference_mode():
        latent = tokenizer.encode(wav)
        encode_s = timed(lambda: tokenizer.encode(wav), device, warmup, repeats)
        decode_s = timed(lambda: tokenizer.decode(latent), device, warmup, repeats)
    audio_s = batch * seconds
    median_enc, median_dec = statistics.median(encode_s), statistics.median(decode_s)
    best_both = min(e + d for e, d in zip(encode_s, decode_s))
    return audio_s / median_enc, audio_s / median_dec, audio_s / (median_enc + median_dec), audio_s / best_both


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML with a top-level 'tokenizer:' section")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. tokenizer.decoder.depth=4"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = CPU, plus CUDA when present"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (torch.set_num_threads)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = apply_overrides(load_yaml(args.config), args.set)
    tokenizer = Tokenizer.from_config(data.get("tokenizer", data), source=args.config).eval()
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
        devices.append(torch.device("cuda"))

    params = sum(p.numel() for p in tokenizer.parameters()) / 1e6
    cfg = tokenizer.config
    print(f"config: {os.path.relpath(args.config)} {' '.join(args.set)}".rstrip())
    print(
        f"tokenizer: {cfg.encoder.name} encoder / {cfg.bottleneck.name} / {cfg.decoder.name} decoder, "
        f"{params:.2f} M parameters, latent {cfg.latent_dim} x {cfg.latent_rate:g} Hz at {cfg.sample_rate} Hz"
    )
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical cores visible, {args.threads} torch threads")
    if any(d.type == "cuda" for d in devices):
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    words = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    print(f"command: python {' '.join(shlex.quote(w) for w in words)}")
    print()
    print("| device | batch | clip (s) | encode RTF | decode RTF | encode+decode RTF | encode+decode RTF, best run |")
    print("|---|---|---|---|---|---|---|")
    for device in devices:
        tokenizer.to(device)
        for batch in args.batch_sizes:
            enc, dec, both, best = measure(tokenizer, device, batch, args.seconds, args.warmup, args.repeats)
            row = (
                f"| {device.type} | {batch} | {args.seconds:g} | {enc:.0f}x | {dec:.0f}x | {both:.0f}x | {best:.0f}x |"
            )
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
