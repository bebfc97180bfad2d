"""``lodit compare``: run a latent-dimension comparison experiment and write its report.

The work is done by :mod:`lodit.eval.compare`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lodit.eval.compare import compare
from lodit.eval.experiment_config import load_experiment
from lodit.eval.report import headline
from lodit.files import read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment config (YAML), e.g. configs/experiments/dim_1280_vs_128.yaml"
    )
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
    results = read_json(report / "results.json")
    for line in headline(results):
        print(line)
    print(f"report: {report / 'report.html'} (and report.md, results.json, PNG plots)")
    return 0
