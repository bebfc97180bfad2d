"""``lodit evaluate``: score generated audio against a reference set (FAD, CLAP, WER, SIM).

The work is done by :mod:`lodit.eval.evaluate`; this module only parses the arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lodit.eval.adherence import format_adherence
from lodit.eval.embedders import EmbedderConfig
from lodit.eval.evaluate import EvaluationConfig, Evaluator, format_metric, read_samples
from lodit.files import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="folder written by `lodit sample` (wav files + samples.json)")
    parser.add_argument("--reference", required=True, help="manifest of the reference clips (JSON Lines)")
    parser.add_argument("--out", default="metrics.json", help="where to write the metrics (default metrics.json)")
    parser.add_argument("--embedder", default="whisper",
                        help="FAD embedder: whisper (default), clap, encodec, tokenizer, vggish, pann")
    parser.add_argument(
        "--embedder-model",
        default="offline:base",
        help="the embedder's model: offline:base (default) / offline:tiny.en for whisper, a hub name or folder",
    )
    parser.add_argument(
        "--clap-model", default="", help="CLAP model (hub name or folder) for the CLAP score; none = unavailable"
    )
    parser.add_argument(
        "--asr-model",
        default="offline:tiny.en",
        help="Whisper for WER: offline:tiny.en (default), offline:base, a CTranslate2 folder or large-v3",
    )
    parser.add_argument("--speaker-model", default="resemblyzer",
                        help="speaker embedder for SIM: resemblyzer (default) or a WavLM x-vector hub name/folder")
    parser.add_argument(
        "--bootstrap", type=int, default=0, help="FAD bootstrap resamples for a 95%% CI (default 0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the FAD bootstrap (default 0)")
    parser.add_argument(
        "--embedding-cache", help="folder caching clip embeddings (default: embedding_cache/ beside --out)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--uniaudio", metavar="FOLDER",
                        help="a UniAudio-Token folder: also report its mean SAE gate and codebook usage/perplexity "
                             "over the generated clips")


def run(args: argparse.Namespace) -> int:
    config = EvaluationConfig(
        embedder=EmbedderConfig(name=args.embedder, model=args.embedder_model, device=args.device),
        clap_model=args.clap_model, asr_model=args.asr_model, speaker_model=args.speaker_model,
        bootstrap=args.bootstrap, seed=args.seed, device=args.device,
    )
    out = Path(args.out)
    cache = Path(args.embedding_cache) if args.embedding_cache else out.parent / "embedding_cache"
    result = Evaluator(config, embedding_cache=cache, progress=True).evaluate(args.samples, args.reference)
    if args.uniaudio:
        from lodit.eval.understanding import uniaudio_statistics

        paths = [sample.path for sample in read_samples(args.samples)[1]]
        result["metrics"] += [m.to_dict() for m in uniaudio_statistics(args.uniaudio, paths)]
    write_json(out, result)
    for metric in result["metrics"]:
        print(format_metric(metric))
    for line in format_adherence(result["adherence"]) if "adherence" in result else []:
        print(line)
    print(f"wrote {out}")
    return 0
