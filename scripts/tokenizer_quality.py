"""Reconstruction quality of a tokenizer run over its training: held-out clips through every checkpoint.

Evaluates the run's initial weights (rebuilt from ``RUN/config.yaml`` with its seed, exactly the
weights step 0 started from), every ``RUN/checkpoints/step-*`` and ``RUN/final`` on the whole clips
of a held-out manifest, and prints one table row per checkpoint: multi-resolution mel distance
(lower is better), STFT distance (lower is better) and SI-SDR in dB (higher is better), all from
``lodit.eval.reconstruction``. ``--json`` also writes the numbers.

Usage (the measurement in the tokenizer-training note; ~10 min on one CPU core)::

    lodit make-dataset --out demo                       # 32 captioned 4-s clips
    # a folder of audio files with same-name .txt captions, then every 8th clip held out:
    lodit prepare folder FOLDER --out all.jsonl
    lodit train-tokenizer --config configs/tokenizer/default.yaml --manifest train.jsonl --out RUN \\
        training.max_steps=500 training.checkpoint_every=50 training.keep_checkpoints=20
    python scripts/tokenizer_quality.py --run RUN --manifest heldout.jsonl --json quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lodit.config import load_config
from lodit.data.dataset import AudioClipDataset
from lodit.eval.reconstruction import multiscale_mel_distance, si_sdr, stft_distance
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.latent_tokenizer.train import TokenizerTrainConfig, build_task
from lodit.training.checkpoint import FINAL_DIR, checkpoint_step, list_checkpoints
from lodit.training.loop import RUN_CONFIG_FILE


def tokenizers(run: Path):
    """``(label, step, tokenizer)`` for the initial weights, every checkpoint and the final export."""
    config = load_config(TokenizerTrainConfig, run / RUN_CONFIG_FILE)
    yield "init", 0, build_task(config).tokenizer.eval()
    for folder in list_checkpoints(run):
        yield folder.name, checkpoint_step(folder), Tokenizer.from_pretrained(folder)
    if (run / FINAL_DIR).is_dir():
        yield FINAL_DIR, config.training.max_steps, Tokenizer.from_pretrained(run / FINAL_DIR)


def evaluate(tokenizer: Tokenizer, clips: list[torch.Tensor]) -> dict[str, float]:
    recons = [tokenizer.reconstruct(clip)[0] for clip in clips]  # (1, S) each
    rate = tokenizer.sample_rate
    return {
        "mel_distance": multiscale_mel_distance(clips, recons, rate).value,
        "stft_distance": stft_distance(clips, recons).value,
        "si_sdr": si_sdr(clips, recons).value,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="tokenizer run folder (lodit train-tokenizer --out)")
    parser.add_argument("--manifest", required=True, help="held-out clips (not in the training manifest)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    rate = load_config(TokenizerTrainConfig, args.run / RUN_CONFIG_FILE).tokenizer.sample_rate
    dataset = AudioClipDataset(args.manifest, rate)  # whole clips, mono, at the tokenizer's rate
    clips = [dataset[i]["wav"] for i in range(len(dataset))]  # (1, S) each
    seconds = sum(c.shape[-1] for c in clips) / rate
    print(f"{len(clips)} held-out clips, {seconds:.1f} s, from {args.manifest}\n")
    print("| checkpoint | step | mel distance | STFT distance | SI-SDR (dB) |")
    print("|---|---|---|---|---|")
    rows = []
    for label, step, tokenizer in tokenizers(args.run):
        numbers = evaluate(tokenizer, clips)
        rows.append({"checkpoint": label, "step": step, **numbers})
        print(f"| {label} | {step} | {numbers['mel_distance']:.4f} | {numbers['stft_distance']:.4f} | "
              f"{numbers['si_sdr']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"manifest": str(args.manifest), "clips": len(clips), "seconds": seconds,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
