"""Reconstruction quality of tokenizer runs over their training: held-out clips through every checkpoint.

For each run (``--run``, repeatable: e.g. one per seed) this evaluates the initial weights (rebuilt
from ``RUN/config.yaml`` with its seed, exactly the weights step 0 started from), every
``RUN/checkpoints/step-*`` and ``RUN/final`` on the whole clips of a held-out manifest plus two
probe signals, and prints one row per checkpoint:

- ``minutes``: when the checkpoint was written, counted from the run's start (its config.yaml);
- ``mel`` / ``mel80``: multi-resolution log-mel distance with the absolute floor and with a floor
  80 dB below each clip's peak (lower is better; see :mod:`lodit.eval.reconstruction`);
- ``level``: median RMS ratio reconstruction / input in dB over the held-out clips (0 = as loud);
- ``stoi`` / ``pesq``: on the speech clips (rows with a transcript);
- ``wer x``: offline-Whisper WER on the reconstructions divided by the WER on the originals;
- ``tone``: a steady 440 Hz tone at -9 dBFS: pitch error (cents) and level (dB);
- ``melody``: eight harmonic notes: the share whose pitch comes back within 50 cents, and level (dB).

``--tone-grid`` also sends steady tones at quarter steps of the latent frame rate through each run's
final tokenizer and prints the pitch that comes back. A decoder that is a fixed function of its
latent frames turns the identical frames of a steady tone into audio that repeats every latent
frame, whose partials can only sit at multiples of the frame rate (25 Hz here): the grid shows
whether a tokenizer has that limit (benchmarks/RESULTS.md, "Steady tones").

``--json`` also writes every number. Usage (the measurement in benchmarks/RESULTS.md)::

    lodit make-dataset --out train --counts audio=48,music=48,speech=48 --seed 0
    lodit make-dataset --out heldout --counts audio=6,music=6,speech=10 --seed 1
    lodit train-tokenizer --config configs/tokenizer/default.yaml --manifest train/manifest.jsonl --out RUN \\
        training.checkpoint_every=300 training.keep_checkpoints=50
    python scripts/tokenizer_quality.py --run RUN --manifest heldout/manifest.jsonl --json quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from lodit.config import load_config
from lodit.data.dataset import AudioClipDataset
from lodit.data.manifest import read_manifest
from lodit.eval.reconstruction import level_ratio, multiscale_mel_distance, pesq_score, stoi_score
from lodit.latent_tokenizer.reconstruct import level_db
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.latent_tokenizer.train import TokenizerTrainConfig, build_task
from lodit.training.checkpoint import FINAL_DIR, STATE_FILE, checkpoint_step, list_checkpoints
from lodit.training.loop import RUN_CONFIG_FILE

TONE_HZ = 440.0
MELODY_MIDI = [60, 64, 67, 72, 69, 65, 62, 67]  # C4 E4 G4 C5 A4 F4 D4 G4
NOTE_SECONDS = 0.3


def tokenizers(run: Path):
    """``(label, step, minutes, tokenizer)`` for the initial weights, every checkpoint and the final export."""
    config = load_config(TokenizerTrainConfig, run / RUN_CONFIG_FILE)
    started = (run / RUN_CONFIG_FILE).stat().st_mtime

    def minutes(folder: Path) -> float:
        return ((folder / STATE_FILE if (folder / STATE_FILE).is_file() else folder).stat().st_mtime - started) / 60

    yield "init", 0, 0.0, build_task(config).tokenizer.eval()
    for folder in list_checkpoints(run):
        yield folder.name, checkpoint_step(folder), minutes(folder), Tokenizer.from_pretrained(folder)
    if (run / FINAL_DIR).is_dir():
        last = list_checkpoints(run)[-1] if list_checkpoints(run) else run / FINAL_DIR
        yield FINAL_DIR, checkpoint_step(last), minutes(run / FINAL_DIR), Tokenizer.from_pretrained(run / FINAL_DIR)


# --------------------------------------------------------------------------- probe signals


def _note(freq: float, seconds: float, rate: int, amplitude: float) -> np.ndarray:
    """Three harmonics (1, 1/2, 1/4) with 10-ms fades: the fundamental is the strongest partial."""
    t = np.arange(int(seconds * rate)) / rate
    wav = sum(gain * np.sin(2 * np.pi * freq * h * t) for h, gain in ((1, 1.0), (2, 0.5), (3, 0.25)))
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return (amplitude * wav / 1.75 * fade).astype(np.float32)


def probes(rate: int) -> dict[str, tuple[torch.Tensor, list[float]]]:
    """``name -> (wav (1, S), the pitch of each segment in Hz)``."""
    tone = 0.35 * np.sin(2 * np.pi * TONE_HZ * np.arange(2 * rate) / rate).astype(np.float32)  # -9 dBFS peak
    freqs = [440.0 * 2 ** ((m - 69) / 12) for m in MELODY_MIDI]
    melody = np.concatenate([_note(f, NOTE_SECONDS, rate, 0.5) for f in freqs])
    return {"tone": (torch.from_numpy(tone)[None], [TONE_HZ]), "melody": (torch.from_numpy(melody)[None], freqs)}


def peak_hz(segment: np.ndarray, rate: int, low: float = 60.0) -> float:
    """The strongest spectral peak above ``low`` Hz (parabolic interpolation, Hann window, 8x zero padding)."""
    n = len(segment) * 8
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n))
    start = int(low * n / rate)
    k = start + int(np.argmax(spectrum[start:-1]))
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    offset = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
    return (k + offset) * rate / n


def pitch_errors_cents(recon: np.ndarray, freqs: list[float], rate: int) -> list[float]:
    """Cents between each segment's expected pitch and the reconstruction's, on the middle 60 % of each."""
    seg = len(recon) // len(freqs)
    errors = []
    for i, freq in enumerate(freqs):
        part = recon[i * seg + int(0.2 * seg) : i * seg + int(0.8 * seg)]
        errors.append(1200 * math.log2(max(peak_hz(part, rate), 1e-3) / freq))
    return errors


# --------------------------------------------------------------------------- one checkpoint


def evaluate(tokenizer: Tokenizer, clips: list[torch.Tensor], speech: list[int], texts: list[str],
             asr, original_wer: float) -> dict[str, float]:
    rate = tokenizer.sample_rate
    with torch.no_grad():
        recons = [tokenizer.reconstruct(clip)[0, :, : clip.shape[-1]] for clip in clips]  # (1, S) each
    numbers = {
        "mel_distance": multiscale_mel_distance(clips, recons, rate).value,
        "mel_distance_80db": multiscale_mel_distance(clips, recons, rate, dynamic_range_db=80.0).value,
        "level_db": level_ratio(clips, recons).value,
    }
    if speech:
        refs, recs = [clips[i] for i in speech], [recons[i] for i in speech]
        numbers["stoi"] = stoi_score(refs, recs, rate).value
        numbers["pesq"] = pesq_score(refs, recs, rate).value
        if asr is not None:
            wer = asr.score([r[0] for r in recs], texts).value
            numbers["wer"] = wer
            numbers["wer_ratio"] = wer / max(original_wer, 1e-3)
    for name, (wav, freqs) in probes(rate).items():
        with torch.no_grad():
            recon = tokenizer.reconstruct(wav)[0, 0, : wav.shape[-1]]
        cents = pitch_errors_cents(recon.numpy(), freqs, rate)
        numbers[f"{name}_level_db"] = level_db(wav[0], recon)
        if name == "tone":
            numbers["tone_cents"] = cents[0]
        else:
            numbers["melody_notes_ok"] = float(np.mean([abs(c) <= 50 for c in cents]))
    return numbers


def tone_grid(tokenizer: Tokenizer, base_hz: float = 400.0, steps: int = 9) -> list[dict[str, float]]:
    """Steady -9 dBFS tones from ``base_hz`` up in quarter steps of the latent frame rate: for each,
    the level that comes back (dB), the strongest output frequency and how far it sits from the
    nearest multiple of the frame rate (in multiples of the rate; 0 = on the grid)."""
    rate, frame_rate = tokenizer.sample_rate, tokenizer.latent_rate
    rows = []
    for i in range(steps):
        freq = base_hz + i * frame_rate / 4
        tone = 0.35 * np.sin(2 * np.pi * freq * np.arange(2 * rate) / rate).astype(np.float32)
        wav = torch.from_numpy(tone)[None]  # (1, S)
        with torch.no_grad():
            recon = tokenizer.reconstruct(wav)[0, 0, : wav.shape[-1]]
        middle = slice(rate // 2, wav.shape[-1] - rate // 4)  # away from the clip's edges
        out_hz = peak_hz(recon[middle].numpy(), rate)
        rows.append({"tone_hz": freq, "level_db": level_db(wav[0, middle], recon[middle]), "output_hz": out_hz,
                     "cents": 1200 * math.log2(max(out_hz, 1e-3) / freq),
                     "output_off_grid": abs(out_hz / frame_rate - round(out_hz / frame_rate))})
    return rows


COLUMNS = [("minutes", "{:.1f}"), ("step", "{}"), ("mel_distance", "{:.3f}"), ("mel_distance_80db", "{:.3f}"),
           ("level_db", "{:+.1f}"), ("stoi", "{:.3f}"), ("pesq", "{:.2f}"), ("wer_ratio", "{:.2f}"),
           ("tone_cents", "{:+.0f}"), ("tone_level_db", "{:+.1f}"), ("melody_notes_ok", "{:.2f}"),
           ("melody_level_db", "{:+.1f}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, action="append",
                        help="tokenizer run folder (lodit train-tokenizer --out); repeat for several seeds")
    parser.add_argument("--manifest", required=True, help="held-out clips (not in the training manifest)")
    parser.add_argument("--asr", default="offline:base", help="ASR model for the WER ratio ('' to skip)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--every", type=int, default=1, help="evaluate every N-th checkpoint (default all)")
    parser.add_argument("--tone-grid", action="store_true",
                        help="also send steady tones at quarter steps of the latent rate through each final tokenizer")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    rate = load_config(TokenizerTrainConfig, args.run[0] / RUN_CONFIG_FILE).tokenizer.sample_rate
    dataset = AudioClipDataset(args.manifest, rate)  # whole clips, mono, at the tokenizer's rate
    clips = [dataset[i]["wav"] for i in range(len(dataset))]  # (1, S) each
    rows_in = read_manifest(args.manifest).rows
    speech = [i for i, row in enumerate(rows_in) if row.transcript]
    texts = [rows_in[i].transcript for i in speech]
    asr, original_wer = None, float("nan")
    if args.asr and speech:
        from lodit.eval.asr import WERScorer

        asr = WERScorer(args.asr)
        original_wer = asr.score([clips[i][0] for i in speech], texts).value
    seconds = sum(c.shape[-1] for c in clips) / rate
    print(f"{len(clips)} held-out clips ({len(speech)} speech), {seconds:.1f} s, from {args.manifest}; "
          f"WER of the originals {original_wer:.3f} ({args.asr or 'no ASR'})\n")
    results = []
    for run in args.run:
        print(f"run {run}\n")
        print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        rows = []
        for index, (label, step, minutes, tokenizer) in enumerate(tokenizers(run)):
            if label not in ("init", FINAL_DIR) and index % args.every:
                continue
            numbers = {"checkpoint": label, "step": step, "minutes": minutes,
                       **evaluate(tokenizer, clips, speech, texts, asr, original_wer)}
            rows.append(numbers)
            cells = [fmt.format(numbers[name]) if name in numbers else "-" for name, fmt in COLUMNS]
            print("| " + " | ".join(cells) + " |", flush=True)
        results.append({"run": str(run), "rows": rows})
        print()
        if args.tone_grid:
            grid = tone_grid(tokenizer)
            results[-1]["tone_grid"] = grid
            print("| tone Hz | level dB | output Hz | cents | output off the frame-rate grid |\n|---|---|---|---|---|")
            for row in grid:
                print(f"| {row['tone_hz']:.2f} | {row['level_db']:+.1f} | {row['output_hz']:.2f} | "
                      f"{row['cents']:+.0f} | {row['output_off_grid']:.2f} |")
            print()
    if args.json:
        args.json.write_text(json.dumps({"manifest": str(args.manifest), "clips": len(clips), "seconds": seconds,
                                         "original_wer": original_wer, "asr": args.asr, "runs": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
