"""The FAD a comparison's generators could reach at best: each arm's tokenizer round trip.

A generator's samples pass through its tokenizer's decoder, so their FAD can't be expected to fall
below the FAD of the tokenizer's own reconstructions. For a finished ``lodit compare`` folder this
embeds (with the experiment's FAD embedder) the evaluation set, the reference clips of the prompts
at the last evaluated step (as many clips as there are generated samples, so the numbers sit on
the same footing as the generated FAD), and each arm's round trip of those clips, and prints:

- the FAD of the prompts' original clips against the evaluation set (the floor at this N);
- per arm, the FAD of its round trips (the ceiling of its generator) next to its generated FAD
  from the report, and the gap between the two (what the generator, not the decoder, loses).

    python scripts/tokenizer_fad_ceiling.py OUT/compare-long      # a lodit compare / demo folder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lodit.data.audio import load_audio
from lodit.data.manifest import read_manifest
from lodit.eval.embedders import build_embedder
from lodit.eval.embedding_cache import EmbeddingCache
from lodit.eval.experiment_config import load_experiment
from lodit.eval.frechet import fad
from lodit.eval.layout import REFERENCES_FILE, ExperimentLayout
from lodit.files import read_json
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.training.checkpoint import FINAL_DIR


def generated_fad(layout: ExperimentLayout, arm: str) -> str:
    """The report's FAD of ``arm`` at the last step (mean over seeds with its interval), if reported."""
    if not layout.results_file.is_file():
        return "-"
    summary = read_json(layout.results_file)["summary"]
    rows = [row for row in summary if row.get("arm") == arm and row.get("metric") == "fad"]
    if not rows:
        return "-"
    last = max(rows, key=lambda row: row["step"])
    if last.get("mean") is None:
        return "-"
    spread = f" ± {(last['ci_high'] - last['ci_low']) / 2:.1f}" if last.get("ci_high") is not None else ""
    return f"{last['mean']:.1f}{spread}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a finished lodit compare (or lodit demo) experiment folder")
    args = parser.parse_args(argv)
    with torch.no_grad():  # not set_grad_enabled(False): the caller's grad mode stays as it was
        return print_ceiling(args.folder)


def print_ceiling(folder: Path) -> int:
    layout = ExperimentLayout(folder)
    config = load_experiment(layout.config_copy)
    embedder = build_embedder(config.evaluation.embedder)
    data = read_manifest(layout.eval_manifest)
    # the evaluation set's embeddings are in the experiment's cache already (computed by its scoring)
    reference = embedder.embed_files([data.audio_path(row) for row in data.rows], EmbeddingCache(layout.embeddings),
                                     segments=[(row.offset, row.duration) for row in data.rows])  # (N_ref, dim)
    samples = layout.samples_dir(config.arms[0].name, config.seeds[0], config.eval_steps[-1])
    prompts = read_json(samples / REFERENCES_FILE)
    clips = [load_audio(entry["audio"], embedder.sample_rate, offset=entry["offset"], duration=entry["duration"])
             for entry in prompts]  # (1, S) each
    originals = torch.stack([embedder.embed(clip[0]) for clip in clips])
    print(f"{folder}: {len(reference)} evaluation clips; the {len(clips)} prompts' own clips score "
          f"FAD {fad(reference, originals).value:.1f} ({embedder.description})\n")
    print("| arm | FAD of the tokenizer's round trips | generated FAD (report, last step) |\n|---|---|---|")
    for arm in config.arms:
        tokenizer_dir = Path(arm.checkpoint) if arm.checkpoint else layout.tokenizer_run(arm.name) / FINAL_DIR
        tokenizer = Tokenizer.from_pretrained(tokenizer_dir).eval()
        if tokenizer.sample_rate != embedder.sample_rate:
            raise SystemExit(f"{arm.name}: the tokenizer runs at {tokenizer.sample_rate} Hz, the embedder at "
                             f"{embedder.sample_rate} Hz; this script needs them equal")
        round_trips = torch.stack([embedder.embed(tokenizer.reconstruct(clip[None])[0, 0, : clip.shape[-1]])
                                   for clip in clips])
        print(f"| {arm.name} | {fad(reference, round_trips).value:.1f} | {generated_fad(layout, arm.name)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
