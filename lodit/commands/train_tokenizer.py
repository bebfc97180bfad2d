"""``lodit train-tokenizer``: train a latent tokenizer (autoencoder or LoSATok).

The work is done by :mod:`lodit.latent_tokenizer.train`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.commands.training_options import (
    MANIFEST_OPTION,
    add_training_arguments,
    report_result,
    run_folder,
    training_overrides,
)
from lodit.config import load_config
from lodit.latent_tokenizer.train import TokenizerTrainConfig, train_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, config_example="configs/tokenizer/default.yaml", data=MANIFEST_OPTION,
                           out_default="runs/<config name>",
                           override_example="training.max_steps=2000 tokenizer.latent_dim=64")


def run(args: argparse.Namespace) -> int:
    config = load_config(TokenizerTrainConfig, args.config, training_overrides(args, MANIFEST_OPTION))
    result = train_tokenizer(config, run_folder(args), resume=not args.no_resume, stop_at=args.max_steps)
    report_result(result, config.training.max_steps, "final tokenizer",
                  hint="Tokenizer.from_pretrained or lodit encode --tokenizer")
    return 0
