"""``lodit demo``: the whole pipeline on the built-in offline dataset, end to end.

The work is done by :mod:`lodit.demo`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse
import time

from lodit.demo import PROFILES, run_demo
from lodit.files import read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    sizes = "; ".join(f"{name}: about {p.minutes} min on a 2-core CPU" for name, p in PROFILES.items())
    parser.add_argument("--profile", choices=list(PROFILES), default="default", help=f"how big a run ({sizes})")
    parser.add_argument("--quick", action="store_true", help="the same as --profile quick")
    parser.add_argument("--config", help="experiment config (default: the shipped configs/demo/demo.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from lodit.eval.report import headline

    started = time.monotonic()
    report = run_demo(args.out, profile="quick" if args.quick else args.profile, config=args.config, seed=args.seed)
    results = read_json(report / "results.json")
    for line in headline(results):
        print(line)
    print(f"demo finished in {time.monotonic() - started:.0f} s; open {report / 'report.html'} "
          f"(also report.md, results.json and the PNG plots in {report})")
    return 0
