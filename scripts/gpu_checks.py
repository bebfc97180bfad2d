"""The checks lodit still owes on a GPU, as one command for a lent GPU machine.

Runs, each as its own ``lodit`` command on generated data, and records what each gave:

1. ``env``: torch, CUDA, the GPU, whether it does bf16;
2. ``tokenizer_bf16``: the real-size tokenizer (configs/tokenizer/noise_norm_128.yaml) trained in
   bf16 autocast, the discriminators joining halfway, so both GAN phases run in bf16;
3. ``encode``: the generated clips through that tokenizer into a latent cache (bf16);
4. ``dit_bf16`` / ``dit_fp32``: the real-size TTA DiT (configs/dit/tta.yaml) on that cache, in bf16
   and in full precision, with a randomly initialised T5 encoder at FLAN-T5-large's width (1024) in
   place of the hub's, which the machine cannot download;
5. ``multi_gpu``: the bf16 DiT again through ``accelerate launch`` on every GPU (two or more);
6. ``tokenizer_speed`` / ``dit_speed``: the GPU rows of benchmarks/tokenizer_speed.py and
   benchmarks/dit_speed.py (the latter needs diffusers).

A failed check is recorded with its last log lines and the others still run. Everything goes to
``OUT/gpu_checks.json`` and ``OUT/gpu_checks.log`` (OUT: ``--out``, else ``$OUT``, else
./gpu_checks). ``--smoke`` runs the same steps with the tiny configs and a few steps on whatever
device there is (the test suite does, on a CPU), so the script is known to work before a GPU is lent.

    python scripts/gpu_checks.py                 # on the GPU machine (sized for under 10 minutes; not yet run)
    python scripts/gpu_checks.py --smoke --out /tmp/checks
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_SECOND = re.compile(r"\|\s*([0-9.]+) step/s")


@dataclass(frozen=True)
class Sizes:
    """What each check trains: configs and step counts (full on a GPU, tiny for --smoke)."""

    tokenizer: str
    tokenizer_steps: int
    dit: str
    dit_steps: int
    text_width: int  # the random T5's d_model
    clips: int  # generated clips per domain (sounds and music); the real-size configs take batches of 64
    tokenizer_speed: tuple[str, ...]  # arguments of benchmarks/tokenizer_speed.py besides the config and device
    dit_speed: tuple[str, ...]  # arguments of benchmarks/dit_speed.py besides the device


FULL = Sizes("configs/tokenizer/noise_norm_128.yaml", 300, "configs/dit/tta.yaml", 300, 1024, 80, (),
             ("--preset", "s", "--batch", "32", "--frames", "250", "--steps", "20"))
SMOKE = Sizes("configs/tokenizer/tiny.yaml", 4, "configs/dit/tiny.yaml", 4, 32, 4, ("--repeats", "1", "--warmup", "1"),
              ("--width", "64", "--depth", "2", "--heads", "2", "--frames", "16", "--batch", "2", "--steps", "2",
               "--warmup", "1", "--matmul-size", "256"))


class Checks:
    """Runs the checks in order, logging each command's output and collecting the results."""

    def __init__(self, out: Path):
        self.out = out
        self.log = (out / "gpu_checks.log").open("w")
        self.results: dict[str, dict] = {}

    def command(self, name: str, args: list[str], **facts) -> dict:
        """Run ``args`` (a Python module or script and its arguments) and record how it went."""
        self.log.write(f"\n===== {name}: {' '.join(args)}\n")
        self.log.flush()
        started = time.monotonic()
        done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
        output = done.stdout + done.stderr
        self.log.write(output)
        self.log.flush()
        result = {"ok": done.returncode == 0, "seconds": round(time.monotonic() - started, 1), **facts}
        rates = STEPS_PER_SECOND.findall(output)
        if rates:
            result["steps_per_second"] = float(rates[-1])  # the trainer's running rate at its last log line
        if done.returncode != 0:
            result["error"] = output.strip().splitlines()[-5:]
        self.results[name] = result
        print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True)
        return result

    def record(self, name: str, **facts) -> None:
        self.results[name] = facts
        print(f"{name}: {facts}", flush=True)

    def write(self) -> Path:
        path = self.out / "gpu_checks.json"
        path.write_text(json.dumps(self.results, indent=1) + "\n")
        self.log.close()
        return path


def environment() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                     bf16=torch.cuda.is_bf16_supported())
    return facts


def random_t5(folder: Path, width: int, captions: list[str]) -> Path:
    """A randomly initialised T5 at ``width`` with a word-level tokenizer over ``captions``: the text
    encoder's shape without its weights, which cannot be downloaded on the GPU machine."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    specials = ["<pad>", "</s>", "<unk>"]
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=specials))
    words.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    heads = max(1, width // 64)
    config = T5Config(vocab_size=words.get_vocab_size(), d_model=width, d_kv=width // heads, d_ff=width * 2,
                      num_layers=2, num_heads=heads, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_checks(out: Path, work: Path, sizes: Sizes) -> Path:
    from lodit.data.synthetic import make_demo_dataset

    checks = Checks(out)
    env = environment()
    checks.record("env", **env)
    precision = "bf16" if env.get("bf16") else "no"  # autocast needs a GPU that does bf16; --smoke on a CPU runs fp32
    device = "cuda" if env["gpus"] else "cpu"

    manifest = make_demo_dataset(work / "data", n_audio=sizes.clips, n_music=sizes.clips, n_speech=0, seconds=4.0)
    captions = [json.loads(line)["caption"] for line in manifest.read_text().splitlines()]
    tokenizer_run, cache, text = work / "tokenizer", work / "cache", random_t5(work / "t5", sizes.text_width, captions)

    steps = sizes.tokenizer_steps
    checks.command("tokenizer_bf16", [
        "-m", "lodit.cli", "train-tokenizer", "--config", sizes.tokenizer, "--manifest", str(manifest),
        "--out", str(tokenizer_run), f"training.max_steps={steps}", f"training.mixed_precision={precision}",
        f"loss.adversarial_start_step={steps // 2}", f"training.checkpoint_every={steps}", "training.log_every=10",
        "training.preview_every=0",
    ], precision=precision, steps=steps, config=sizes.tokenizer)
    checks.command("encode", [
        "-m", "lodit.cli", "encode", "--tokenizer", str(tokenizer_run / "final"), "--manifest", str(manifest),
        "--out", str(cache), "--device", device, "--no-progress",
        *(["--dtype", "bfloat16"] if precision == "bf16" else []),
    ])
    def train_dit(run: str, mixed: str) -> list[str]:
        return ["-m", "lodit.cli", "train-dit", "--config", sizes.dit, "--cache", str(cache), "--out", str(work / run),
                "text_encoder.name=t5", f"text_encoder.model={text}", f"training.max_steps={sizes.dit_steps}",
                f"training.mixed_precision={mixed}", f"training.checkpoint_every={sizes.dit_steps}",
                "training.log_every=10", "training.preview_every=0"]

    for name, mixed in (("dit_bf16", precision), ("dit_fp32", "no")):
        checks.command(name, train_dit(name, mixed), precision=mixed, steps=sizes.dit_steps, config=sizes.dit)
    if env["gpus"] >= 2:
        launch = ["-m", "accelerate.commands.launch", "--num_processes", str(env["gpus"])]
        checks.command("multi_gpu", [*launch, *train_dit("dit_multi", precision)], processes=env["gpus"])
    else:
        checks.record("multi_gpu", ok=None, skipped=f"needs two or more GPUs; this machine has {env['gpus']}")

    checks.command("tokenizer_speed", ["benchmarks/tokenizer_speed.py", "--config", sizes.tokenizer,
                                       "--device", device, *sizes.tokenizer_speed])
    try:
        import diffusers  # noqa: F401  (benchmarks/dit_speed.py times diffusers' DiT beside lodit's)
    except ImportError:
        checks.record("dit_speed", ok=None, skipped="diffusers is not installed (carry its wheel)")
    else:
        checks.command("dit_speed", ["benchmarks/dit_speed.py", "--device", device, *sizes.dit_speed,
                                     "--json", str(out / "dit_speed.json")])
    return checks.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_checks", help="where the results go")
    parser.add_argument("--smoke", action="store_true", help="tiny configs and a few steps (a test of this script)")
    parser.add_argument("--work", help="scratch folder for data and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        path = run_checks(out, Path(args.work or scratch), SMOKE if args.smoke else FULL)
    results = json.loads(path.read_text())
    failed = [name for name, result in results.items() if result.get("ok") is False]
    print(f"results: {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
