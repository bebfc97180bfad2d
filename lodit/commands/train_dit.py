"""``lodit train-dit``: train a flow-matching DiT on a latent cache.

The work is done by :mod:`lodit.dit.train`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.commands.training_options import (
    DataOption,
    add_training_arguments,
    report_result,
    run_folder,
    training_overrides,
)
from lodit.config import load_config
from lodit.dit.train import train_dit
from lodit.dit.train_config import DiTTrainConfig

DATA_OPTION = DataOption("--cache", "data.cache", "latent cache folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, config_example="configs/dit/tta.yaml", data=DATA_OPTION,
                           out_default="runs/<config name>", override_example="training.max_steps=1000 dit.depth=8")


def run(args: argparse.Namespace) -> int:
    config = load_config(DiTTrainConfig, args.config, training_overrides(args, DATA_OPTION))
    result = train_dit(config, run_folder(args), resume=not args.no_resume, stop_at=args.max_steps)
    report_result(result, config.training.max_steps, "final model")
    return 0
