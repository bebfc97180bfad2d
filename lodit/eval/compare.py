"""``lodit compare``: run a latent-dimension comparison experiment and write its report.

``lodit compare --config configs/experiments/dim_1280_vs_128.yaml data.train_manifest=M`` runs
every stage the output folder does not hold yet (tokenizer training, encoding, DiT training with
sampling and scoring at each evaluation step) and writes ``OUT/report/`` (see
:mod:`lodit.eval.experiment` for the stages and :mod:`lodit.eval.report` for the report). Running
the same command again reuses everything finished and continues what was interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lodit.eval.experiment import ExperimentConfig, ExperimentRunner, load_experiment
from lodit.eval.report import headline


def compare(config: ExperimentConfig, out: str | os.PathLike, *, say=None) -> Path:
    """Run (or resume) the experiment into ``out``; returns the report folder."""
    return ExperimentRunner(config, out, say=say).run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment config (YAML), e.g. configs/experiments/dim_1280_vs_128.yaml")
    parser.add_argument("--out", help="experiment folder (default runs/compare/<experiment name>)")
    parser.add_argument("--seed", type=int, action="append", metavar="SEED",
                        help="a DiT training seed; repeat for several (--seed 0 --seed 1); overrides seeds")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. data.train_manifest=data/train.jsonl dit_steps=20000")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.seed:
        overrides.append(f"seeds={json.dumps(args.seed)}")
    config = load_experiment(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / "compare" / config.name
    report = compare(config, out)
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    for line in headline(results):
        print(line)
    print(f"report: {report / 'report.html'} (and report.md, results.json, PNG plots)")
    return 0
