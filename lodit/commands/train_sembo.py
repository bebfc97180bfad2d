"""``lodit train-sembo``: pre-train SemBo, LoSATok's semantic bottleneck.

The work is done by :mod:`lodit.latent_tokenizer.sembo_train`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.commands.training_options import (
    MANIFEST_OPTION,
    add_training_arguments,
    run_training,
)
from lodit.latent_tokenizer.sembo_train import SemBoTrainConfig, train_sembo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, config_example="configs/sembo/whisper_large_v3.yaml", data=MANIFEST_OPTION,
                           out_default="runs/sembo_<config name>",
                           override_example="training.max_steps=2000 sembo.lambda_rec=100")


def run(args: argparse.Namespace) -> int:
    return run_training(args, SemBoTrainConfig, train_sembo, MANIFEST_OPTION, what="SemBo", prefix="sembo_",
                        hint="use it as tokenizer.encoder.semantic.sembo", keys=("model/loss", "model/rec", "model/tr"))
