"""``lodit train-repr``: train F3's representation encoder on a latent cache.

The work is done by :mod:`lodit.repr.train`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.commands.training_options import (
    DataOption,
    add_training_arguments,
    run_training,
)
from lodit.repr.train import ReprTrainConfig, train_repr

DATA_OPTION = DataOption("--cache", "data.cache", "latent cache of the autoencoder (lodit encode --tokenizer)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, config_example="configs/repr/f3_tiny.yaml", data=DATA_OPTION,
                           out_default="runs/repr_<config name>",
                           override_example="training.max_steps=2000 f3_repr.horizon=8")


def run(args: argparse.Namespace) -> int:
    return run_training(args, ReprTrainConfig, train_repr, DATA_OPTION, what="F3 encoder", prefix="repr_",
                        hint="lodit encode --features FOLDER", keys=("model/loss", "model/rq_mtp", "model/text"))
