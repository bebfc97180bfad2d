"""``lodit train-dit``: train a flow-matching DiT on a latent cache.

The work is done by :mod:`lodit.dit.train`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.commands.training_options import (
    DataOption,
    add_training_arguments,
    run_training,
)
from lodit.dit.train import train_dit
from lodit.dit.train_config import DiTTrainConfig

DATA_OPTION = DataOption("--cache", "data.cache", "latent cache folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, config_example="configs/dit/tta.yaml", data=DATA_OPTION,
                           out_default="runs/<config name>", override_example="training.max_steps=1000 dit.depth=8")


def run(args: argparse.Namespace) -> int:
    return run_training(args, DiTTrainConfig, train_dit, DATA_OPTION, what="final model")
