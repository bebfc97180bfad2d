"""``lodit app``: serve the listening app (Generate, Tokenizer, Compare) on this machine.

The given checkpoint and tokenizer are loaded before the server starts (a wrong folder is a
one-line error, not a page that fails later); models found in a ``--compare`` folder load on first
use. The server listens on 127.0.0.1 only unless ``--host`` says otherwise: the app reads and
writes local files on behalf of whoever reaches it.
"""

from __future__ import annotations

import argparse

from lodit.errors import LoditError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", help="DiT run or checkpoint folder (`lodit train-dit --out`) for the Generate tab"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder for the Tokenizer tab, and to decode --checkpoint "
                                            "(default: the tokenizer its latent cache recorded)")
    parser.add_argument(
        "--compare",
        help="`lodit compare` output folder (or its report/) for the Compare tab; its arms' "
        "tokenizers and DiTs are offered in the other tabs too",
    )
    parser.add_argument("--port", type=int, help="port to serve on (default: the first free one from 7860)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app to the network)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--out", help="folder for generated files (default: a new temporary folder)")


def run(args: argparse.Namespace) -> int:
    from lodit.app.state import AppState
    from lodit.app.ui import build_app, launch, require_gradio

    require_gradio()  # before loading models: a missing extra is the first thing to hear about
    if args.port is not None and not 0 < args.port < 65536:
        raise LoditError(f"--port {args.port} is not a port; give 1-65535 (or leave it out)")
    if not (args.checkpoint or args.tokenizer or args.compare):
        raise LoditError("nothing to serve; give --checkpoint DIR, --tokenizer DIR and/or --compare DIR")
    state = AppState.create(checkpoint=args.checkpoint, tokenizer=args.tokenizer, compare=args.compare,
                            device=args.device, out_dir=args.out)
    print(f"lodit app: {len(state.checkpoints)} DiT checkpoint(s), {len(state.tokenizers)} tokenizer(s)"
          + (f", comparison {state.compare_dir}" if state.compare_dir else "") + f"; device {state.device}; "
          f"files in {state.out_dir}")
    try:
        launch(build_app(state), host=args.host, port=args.port, block=True)
    except OSError as exc:  # the port is taken or the address can't be bound
        raise LoditError(
            f"cannot serve on {args.host}:{args.port or 'default port'} ({exc}); choose another --port"
        ) from None
    return 0
