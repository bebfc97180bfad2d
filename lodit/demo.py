"""``lodit demo``: the whole pipeline on the built-in offline dataset, end to end.

Generates the demo dataset (:func:`lodit.data.synthetic.make_demo_dataset`: captioned sounds,
music and espeak-ng speech, deterministic for a seed) and runs the comparison experiment of
``configs/demo/demo.yaml`` on it with ``lodit compare``'s runner: two tokenizers that differ only
in latent width are trained, the dataset is encoded with each, a DiT is trained on each latent
space with sampling and scoring at evaluation steps, and ``OUT/compare/report/`` gets the report.
Nothing is downloaded: every model is either trained here or ships in a pip package.

The full run takes about six minutes on a 2-core CPU, ``--quick`` (a smaller dataset and fewer
steps, :data:`QUICK_OVERRIDES`) about two. Running the command again reuses what is finished.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lodit.config import resolve_config_path
from lodit.data.synthetic import make_demo_dataset
from lodit.errors import LoditError

DEMO_CONFIG = "configs/demo/demo.yaml"  # resolved against the shipped configs from any folder
DATASET = {"n_audio": 24, "n_music": 24, "n_speech": 12, "seconds": 2.0}
QUICK_DATASET = {"n_audio": 10, "n_music": 10, "n_speech": 5, "seconds": 2.0}
QUICK_OVERRIDES = ["tokenizer_steps=300", "dit_steps=300", "eval_steps=[150,300]", "evaluation.num_prompts=4",
                   "evaluation.embedder.model=offline:tiny.en", "evaluation.reconstruction_clips=4",
                   "evaluation.audio_examples=2", "sampling.steps=6"]


def demo_dataset(folder: Path, sizes: dict, seed: int = 0) -> Path:
    """The demo dataset in ``folder`` (generated unless already there with these sizes); its manifest."""
    manifest = folder / "manifest.jsonl"
    settings = folder / "dataset.json"
    if manifest.is_file() and settings.is_file():
        made = json.loads(settings.read_text())
        wanted = {"audio": sizes["n_audio"], "music": sizes["n_music"], "speech": sizes["n_speech"]}
        if made.get("seed") == seed and made.get("seconds") == sizes["seconds"] and made.get("counts") == wanted:
            return manifest
    return make_demo_dataset(folder, seed=seed, **sizes)


def run_demo(out: str | Path, *, quick: bool = False, config: str | Path | None = None, seed: int = 0) -> Path:
    """Dataset, then the comparison experiment; returns the report folder."""
    from lodit.eval.compare import compare
    from lodit.eval.experiment import load_experiment

    out = Path(out)
    config_path = resolve_config_path(config or DEMO_CONFIG)
    if not config_path.is_file():
        raise LoditError(f"{config_path}: demo experiment config not found; pass --config with an experiment "
                         "YAML (the shipped one is configs/demo/demo.yaml; reinstall lodit if it is missing)")
    kind = "quick" if quick else "full"
    manifest = demo_dataset(out / f"dataset-{kind}", QUICK_DATASET if quick else DATASET, seed)
    overrides = [f"data.train_manifest={manifest.resolve()}"] + (QUICK_OVERRIDES if quick else [])
    experiment = load_experiment(config_path, overrides)
    return compare(experiment, out / f"compare-{kind}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer steps (about 2-3 minutes on a 2-core CPU)")
    parser.add_argument("--config", help="experiment config (default: the shipped configs/demo/demo.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from lodit.eval.report import headline

    started = time.monotonic()
    report = run_demo(args.out, quick=args.quick, config=args.config, seed=args.seed)
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    for line in headline(results):
        print(line)
    print(f"demo finished in {time.monotonic() - started:.0f} s; open {report / 'report.html'} "
          f"(also report.md, results.json and the PNG plots in {report})")
    return 0
