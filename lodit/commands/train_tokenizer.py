"""``lodit train-tokenizer``: train a latent tokenizer (autoencoder, LoSATok or UniAudio-Token).

The work is done by :mod:`lodit.latent_tokenizer.train`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.commands.training_options import (
    MANIFEST_OPTION,
    add_training_arguments,
    run_folder,
    run_training,
    training_overrides,
)
from lodit.config import load_config
from lodit.latent_tokenizer.train import TokenizerTrainConfig, train_tokenizer
from lodit.latent_tokenizer.uniaudio_train import UniAudioTrainConfig, is_uniaudio_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, config_example="configs/tokenizer/default.yaml", data=MANIFEST_OPTION,
                           out_default="runs/<config name>",
                           override_example="training.max_steps=2000 tokenizer.latent_dim=64")


def run(args: argparse.Namespace) -> int:
    overrides = training_overrides(args, MANIFEST_OPTION)
    if is_uniaudio_config(args.config):
        return run_uniaudio(args, overrides)
    return run_training(args, TokenizerTrainConfig, train_tokenizer, MANIFEST_OPTION, what="final tokenizer",
                        hint="Tokenizer.from_pretrained or lodit encode --tokenizer", overrides=overrides)


def run_uniaudio(args: argparse.Namespace, overrides: list[str]) -> int:
    """A UniAudio-Token config (top-level ``uniaudio:``): its stages, then one line per stage."""
    from lodit.dit.uniaudio_stages import train_uniaudio  # its decoder stage is a DiT: loaded only for these configs

    config = load_config(UniAudioTrainConfig, args.config, overrides)
    run_dir = run_folder(args)
    outcome = train_uniaudio(config, run_dir, resume=not args.no_resume, stop_at=args.max_steps)
    for stage, result in outcome.results.items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.scalars.items())
                          if k.split("/")[-1] in ("loss", "gate", "usage", "perplexity", "flow"))
        print(f"stage {stage}: step {result.step} ({shown})")
    if outcome.final is None:
        print(f"stopped before the last stage finished; run the same command again to continue ({run_dir})")
    else:
        print(f"UniAudio-Token in {outcome.final} (lodit encode --tokens {outcome.final}; "
              f"lodit reconstruct --tokenizer {outcome.final} IN OUT)")
    return 0
