"""``lodit reconstruct``: encode and decode one audio file with a tokenizer.

The work is done by :mod:`lodit.latent_tokenizer.reconstruct`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse

from lodit.latent_tokenizer.reconstruct import reconstruct_file
from lodit.latent_tokenizer.uniaudio import is_uniaudio_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer folder (config.json + model.safetensors), e.g. runs/default/final")
    parser.add_argument("input", help="audio file to reconstruct (any rate; channels are mixed to mono)")
    parser.add_argument("output", help="where to write the reconstruction (the format follows the suffix, e.g. .wav)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--no-ema", action="store_true", help="use model.safetensors even when ema.safetensors exists")
    parser.add_argument("--reference", help="UniAudio-Token only: audio file whose voice/recording prompts the token "
                                            "decoder (default: the input itself)")
    parser.add_argument("--seed", type=int, default=0,
                        help="UniAudio-Token only: seed of the decoder's noise (default 0)")


def run(args: argparse.Namespace) -> int:
    if is_uniaudio_folder(args.tokenizer):
        # tokens go back to audio through UniAudio-Token's DiT decoder
        from lodit.dit.uniaudio_stages import reconstruct_uniaudio

        result = reconstruct_uniaudio(args.tokenizer, args.input, args.output, reference=args.reference,
                                      device=args.device, seed=args.seed)
        print(f"wrote {args.output}: {result.line().replace(' x 1 latents', ' tokens')}")
        return 0
    result = reconstruct_file(args.tokenizer, args.input, args.output, device=args.device, use_ema=not args.no_ema)
    print(f"wrote {args.output}: {result.line()}")
    return 0
