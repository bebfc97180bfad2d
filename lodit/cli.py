"""The ``lodit`` command.

Each subcommand is a module of :mod:`lodit.commands` with two functions, ``add_arguments(parser)``
and ``run(args) -> int | None``, that parse arguments and call the library function doing the
work. This file only maps names to those modules (imported lazily, so ``lodit --help`` stays fast)
and turns user mistakes (:class:`~lodit.errors.LoditError`) into one-line messages with a
non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from lodit import __version__
from lodit.cores import use_chosen_threads
from lodit.errors import LoditError
from lodit.outputs import check_output_file, check_output_folder

# name -> (module implementing it, one-line help). Order is the order of the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "make-dataset": (
        "lodit.commands.make_dataset",
        "generate the built-in captioned demo audio (sounds, music, speech)",
    ),
    "prepare": ("lodit.commands.prepare", "build a manifest (JSONL) from a folder or a public dataset layout"),
    "train-sembo": ("lodit.commands.train_sembo", "pre-train SemBo, LoSATok's semantic bottleneck"),
    "train-tokenizer": ("lodit.commands.train_tokenizer", "train a latent tokenizer (autoencoder or LoSATok)"),
    "reconstruct": ("lodit.commands.reconstruct", "encode and decode one audio file with a tokenizer"),
    "encode": ("lodit.commands.encode", "encode a manifest into a latent cache"),
    "train-repr": ("lodit.commands.train_repr", "train F3's representation encoder (RQ-MTP) on a latent cache"),
    "train-dit": ("lodit.commands.train_dit", "train a flow-matching DiT on a latent cache"),
    "sample": ("lodit.commands.sample", "generate audio from text prompts with a trained DiT"),
    "evaluate": ("lodit.commands.evaluate", "score generated audio against a reference set (FAD, CLAP, WER, SIM)"),
    "compare": ("lodit.commands.compare", "run a latent-dimension comparison experiment and write its report"),
    "demo": ("lodit.commands.demo", "the whole pipeline on the built-in offline dataset, end to end"),
    "app": ("lodit.commands.app", "listen in a browser: generate, round-trip through a tokenizer, compare arms"),
}
# Commands whose --out (or positional output) is a file; every other --out is a folder.
OUTPUT_FILES = {"prepare": "out", "evaluate": "out", "reconstruct": "output"}
# Commands that run models: they pick their CPU thread count from the idle cores (lodit.cores).
COMPUTE_COMMANDS = {"train-sembo", "train-tokenizer", "train-repr", "reconstruct", "encode", "train-dit", "sample",
                    "evaluate", "compare", "demo"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lodit", description="DiT audio generation over compact latents.")
    parser.add_argument("--version", action="version", version=f"lodit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # lodit shows its own progress; the hub's per-file weight-loading bars only add noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / version / an unknown-command error
        if args.command is None:
            parser.print_help()
        return 0 if args.command is None else 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    command = argparse.ArgumentParser(prog=f"lodit {name}", description=help_text)
    module = importlib.import_module(module_name)
    from lodit.devices import flush_denormals
    from lodit.status import show_status

    flush_denormals()
    show_status()  # the library's status messages (logging), one line each on stderr
    module.add_arguments(command)
    args = command.parse_args(argv[1:])
    try:
        check_outputs(name, args)
        if name in COMPUTE_COMMANDS:
            use_chosen_threads()
        code = module.run(args)
    except LoditError as exc:
        print(f"lodit {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # a trainer that saved a checkpoint on the first Ctrl-C says where in the exception
        said = f" ({_one_line(exc)})" if exc.args else ""
        print(f"lodit {name}: interrupted{said}", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        print(f"lodit {name}: error: out of memory ({_one_line(exc)[:160]}); lower the batch size, the clip "
              f"length or the model size, or use a machine with more memory", file=sys.stderr)
        return 2
    return int(code or 0)


def check_outputs(name: str, args: argparse.Namespace) -> None:
    """Refuse an output location that can't be written before the command does any work."""
    file_option = OUTPUT_FILES.get(name)
    if file_option is not None:
        value = getattr(args, file_option, None)
        if value:
            flag = f"--{file_option}" if file_option == "out" else "output"
            check_output_file(value, flag)
        return
    value = getattr(args, "out", None)
    if value:
        check_output_folder(value)


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
