"""What the thread choice is worth: tokenizer training speed with and without another busy process.

Trains ``configs/tokenizer/default.yaml`` for ``--steps`` steps on a small generated dataset, four
ways: on an idle machine and next to one busy process (a pure-Python loop, one core), each with the
thread count lodit chooses (``lodit.cores``) and with every core forced (``LODIT_THREADS`` = the
core count). Prints steps per second and the chosen count. Run it on an otherwise idle machine::

    python benchmarks/thread_choice.py --steps 150
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tokenizer" / "default.yaml"


def train(work: Path, manifest: Path, steps: int, threads: str | None) -> tuple[float, str]:
    """Steps per second of one training run (from the first to the last progress line) and the
    trainer's start-up line."""
    env = {k: v for k, v in os.environ.items() if k not in ("LODIT_THREADS", "OMP_NUM_THREADS")}
    if threads is not None:
        env["LODIT_THREADS"] = threads
    out = work / f"run-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "lodit.cli", "train-tokenizer", "--config", str(CONFIG), "--manifest",
               str(manifest), "--out", str(out), f"training.max_steps={steps}", "training.log_every=10",
               "training.checkpoint_every=100000", "training.warmup_steps=0"]
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - started
    rates = [float(r) for r in re.findall(r"([0-9.]+) step/s", proc.stderr)]
    chosen = next((line for line in proc.stderr.splitlines() if line.startswith("train: ")), "")
    return (rates[-1] if rates else steps / elapsed), chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "lodit.cli", "make-dataset", "--out", str(work / "data"),
                        "--counts", "audio=8,music=8,speech=0"], check=True, capture_output=True)
        manifest = work / "data" / "manifest.jsonl"
        print(f"{cores} cores; default.yaml, {args.steps} steps at batch 8 x 1 s\n")
        print("| other load | threads | steps/s | trainer's line |\n|---|---|---|---|")
        for load in ("idle", "one busy process"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
            try:
                time.sleep(1.0)  # let the busy process show up in the CPU counters
                for threads in (None, str(cores)):
                    rate, chosen = train(work, manifest, args.steps, threads)
                    label = "chosen" if threads is None else f"forced {threads}"
                    print(f"| {load} | {label} | {rate:.2f} | {chosen[len('train: '):]} |", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
