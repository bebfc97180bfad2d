"""``lodit encode``: encode a manifest into a latent cache.

The work is done by :mod:`lodit.latent_tokenizer.encode`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse
import time

from lodit.devices import choose_device
from lodit.errors import LoditError
from lodit.latent_tokenizer.encode import encode_manifest, encode_with
from lodit.latent_tokenizer.uniaudio import TokenFrameEncoder
from lodit.repr.f3 import FeatureFrameEncoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--tokenizer",
                       help="tokenizer folder (config.json + model.safetensors), e.g. runs/default/final")
    model.add_argument("--tokens", metavar="FOLDER",
                       help="a UniAudio-Token folder: write token ids (one channel, exact integers stored as float32) "
                            "with the codebook's identity instead of latents")
    model.add_argument("--features", metavar="FOLDER",
                       help="an F3 representation-encoder folder (lodit train-repr): write its features")
    parser.add_argument("--manifest", required=True, help="manifest of the clips to encode (JSON Lines)")
    parser.add_argument("--out", required=True, help="latent cache folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted encode into --out")
    parser.add_argument("--batch-size", type=int, default=8, help="clips of equal length encoded together (default 8)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="storage type of the latents (default float32; reads are always float32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="a bad row (invalid line, unreadable audio) stops the encode (fail, default) "
                             "or is reported and left out (skip)")
    parser.add_argument("--teacher-cache", metavar="FOLDER",
                        help="with a tokenizer that has a semantic teacher (LoSATok): the teacher-feature cache its "
                             "training filled (data.teacher_cache); clips found there skip the teacher's pass")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    options = dict(batch_size=args.batch_size, dtype=args.dtype, overwrite=args.overwrite, resume=args.resume,
                   on_error=args.on_error, progress=not args.no_progress)
    if args.teacher_cache and not args.tokenizer:
        raise LoditError("--teacher-cache goes with --tokenizer (a tokenizer with a semantic teacher); drop it")
    if args.tokens:
        if args.dtype != "float32":
            raise LoditError("--tokens stores token ids, which only float32 keeps exact; drop --dtype")
        encoder = TokenFrameEncoder(args.tokens, choose_device(args.device, option="--device"))
        summary = encode_with(encoder, encoder.producer(), args.manifest, args.out, **options)
    elif args.features:
        encoder = FeatureFrameEncoder(args.features, choose_device(args.device, option="--device"))
        summary = encode_with(encoder, encoder.producer(), args.manifest, args.out, **options)
    else:
        summary = encode_manifest(args.tokenizer, args.manifest, args.out, device=args.device,
                                  teacher_cache=args.teacher_cache, **options)
    elapsed = time.monotonic() - started
    speed = f", {summary.seconds / elapsed:.0f}x real time" if elapsed > 0 and summary.seconds else ""
    print(summary.line() + speed)
    return 0
