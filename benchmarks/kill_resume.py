"""Kill-and-resume check: SIGKILL lodit commands at random moments, rerun them until they finish,
and compare what they leave with an uninterrupted run, bit for bit.

For each command (``train-tokenizer``, ``train-dit``, ``encode``, ``compare``) the script runs it
once without interruption (the reference), then again in a fresh folder where it is killed with
SIGKILL after a random delay (uniform between ``--min-delay`` seconds and the reference's wall
time), restarted with the same command line, killed again, ... until an invocation ends by itself.
It repeats such killed runs until the command has taken ``--kills-per-command`` kills, then compares:

- trainers: every tensor of ``final/model.safetensors`` and ``final/ema.safetensors``;
- encode: every file of the latent cache, byte for byte;
- compare: every ``*.safetensors`` under the experiment's ``final/`` folders and every latent cache
  file (reports hold wall-clock times, so they are not compared).

Usage (CPU; a few minutes per command)::

    python benchmarks/kill_resume.py --work /tmp/kill --kills-per-command 6
    python benchmarks/kill_resume.py --work /tmp/kill --commands encode,train-tokenizer --seed 1

Prints one line per killed run and a summary table (command, kills, runs, equal) at the end; exits 1
if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def make_data(folder: Path, clips: int, seed: int) -> Path:
    """Captioned one-second tones and noise bursts, and their manifest (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    t = np.arange(SR) / SR
    for i in range(clips):
        pitch = int(rng.choice([220, 330, 440, 660]))
        wav = 0.3 * np.sin(2 * np.pi * pitch * t) if i % 2 == 0 else 0.1 * rng.standard_normal(SR)
        sf.write(str(audio / f"clip{i:03d}.wav"), wav.astype(np.float32), SR)
        caption = f"a steady tone at {pitch} hertz" if i % 2 == 0 else "a burst of white noise"
        rows.append({"audio": f"audio/clip{i:03d}.wav", "id": f"clip{i:03d}", "caption": caption, "domain": "audio"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def lodit(*args: str) -> list[str]:
    return [sys.executable, "-m", "lodit.cli", *args]


def commands(data: Path, tokenizer: Path, cache: Path) -> dict[str, callable]:
    """For each command, a function of the output folder giving its command line."""
    return {
        "train-tokenizer": lambda out: lodit(
            "train-tokenizer", "--config", "configs/tokenizer/tiny.yaml", "--manifest", str(data), "--out", str(out),
            "training.max_steps=40", "training.checkpoint_every=3", "training.num_workers=0", "training.log_every=10"),
        "train-dit": lambda out: lodit(
            "train-dit", "--config", "configs/dit/tiny.yaml", "--cache", str(cache), "--out", str(out),
            "training.max_steps=40", "training.checkpoint_every=3", "training.num_workers=0", "training.log_every=10"),
        "encode": lambda out: lodit(
            "encode", "--tokenizer", str(tokenizer), "--manifest", str(data), "--out", str(out), "--resume",
            "--batch-size", "2", "--no-progress", "--device", "cpu"),
        "compare": lambda out: lodit(
            "compare", "--config", "configs/experiments/tiny.yaml", "--out", str(out),
            f"data.train_manifest={data}"),
    }


def run_to_end(argv: list[str], log: Path, timeout: float = 1800) -> float:
    started = time.monotonic()
    with open(log, "ab") as handle:
        proc = subprocess.run(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with {proc.returncode}; see {log}")
    return time.monotonic() - started


def killed_run(argv: list[str], log: Path, rng: random.Random, low: float, high: float, max_kills: int) -> int:
    """Run ``argv`` until an invocation finishes by itself, SIGKILLing each one after a random delay;
    after ``max_kills`` kills the next invocation runs to its end (an invocation that only has its
    start-up and exit left, e.g. a finished encode, might otherwise never outlast the delays)."""
    kills = 0
    while True:
        delay = rng.uniform(low, high) if kills < max_kills else None
        with open(log, "ab") as handle:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                handle.write(f"\n--- SIGKILL after {delay:.2f} s ---\n".encode())
                continue
        if code != 0:
            raise SystemExit(f"{' '.join(argv)} failed with {code} after {kills} kills; see {log}")
        return kills


def tensors_equal(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def same_outputs(command: str, ref: Path, out: Path) -> tuple[bool, str]:
    if command in ("train-tokenizer", "train-dit"):
        files = [
            Path("final") / name
            for name in ("model.safetensors", "ema.safetensors")
            if (ref / "final" / name).is_file()
        ]
    elif command == "encode":
        files = sorted(p.relative_to(ref) for p in ref.iterdir())
    else:
        files = sorted(p.relative_to(ref) for p in ref.rglob("*.safetensors")
                       if "final" in p.parts or "cache" in str(p.parent))
    if not files:
        return False, "the reference has no outputs to compare"
    for name in files:
        if not (out / name).is_file():
            return False, f"{name} missing"
        if name.suffix == ".safetensors" and command != "encode":
            if not tensors_equal(ref / name, out / name):
                return False, f"{name} differs"
        elif (ref / name).read_bytes() != (out / name).read_bytes():
            return False, f"{name} differs"
    return True, f"{len(files)} files equal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="scratch folder (created)")
    parser.add_argument("--commands", default="train-tokenizer,train-dit,encode,compare")
    parser.add_argument("--kills-per-command", type=int, default=6)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--min-delay", type=float, default=1.5, help="earliest kill, seconds (imports take ~1-2 s)")
    parser.add_argument("--max-delay", type=float, default=0.0,
                        help="latest kill, seconds (default: 0.6 x the reference's wall time)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    os.environ.setdefault("LODIT_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    data = make_data(work / "data", args.clips, args.seed)
    log = work / "log.txt"
    base = commands(data, work / "tok-ref" / "final", work / "cache-ref")
    # the tokenizer and cache the DiT and encode runs need are the references of the first two
    wanted = args.commands.split(",")
    order = [
        c
        for c in ("train-tokenizer", "encode", "train-dit", "compare")
        if c in wanted
        or (c == "train-tokenizer" and {"encode", "train-dit"} & set(wanted))
        or (c == "encode" and "train-dit" in wanted)
    ]
    names = {"train-tokenizer": "tok", "encode": "cache", "train-dit": "dit", "compare": "cmp"}
    summary = []
    for command in order:
        ref = work / f"{names[command]}-ref"
        wall = (
            run_to_end(base[command](ref), log)
            if not (ref / "final").exists() and not (ref / "meta.json").exists()
            else float("nan")
        )
        if command not in wanted:
            continue
        kills = runs = 0
        all_equal = True
        while kills < args.kills_per_command:
            out = work / f"{names[command]}-killed-{runs}"
            started = time.monotonic()
            high = args.max_delay or max(args.min_delay + 0.5, 0.6 * wall if wall == wall else 10.0)
            taken = killed_run(base[command](out), log, rng, args.min_delay, high, args.kills_per_command - kills)
            equal, detail = same_outputs(command, ref, out)
            all_equal &= equal
            kills += taken
            runs += 1
            print(f"{command}: run {runs}: {taken} kills, {time.monotonic() - started:.0f} s, "
                  f"{'EQUAL' if equal else 'DIFFERENT'} ({detail})", flush=True)
        summary.append((command, kills, runs, all_equal, wall))
    print("\ncommand          kills  killed runs  bitwise equal  reference wall (s)")
    for command, kills, runs, equal, wall in summary:
        print(f"{command:16s} {kills:5d}  {runs:11d}  {str(equal):13s}  {wall:.1f}")
    print(f"total kills: {sum(s[1] for s in summary)}")
    return 0 if all(s[3] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
