"""``lodit demo``: the whole pipeline on the built-in offline dataset, end to end.

Generates the demo dataset (:func:`lodit.data.synthetic.make_demo_dataset`: captioned sounds,
music and espeak-ng speech, deterministic for a seed) and a set of counted-beep captions whose count,
pitch and length every DiT is judged on, and runs the comparison experiment of
``configs/demo/demo.yaml`` on it with ``lodit compare``'s runner: LoSATok at 128 dims (its SemBo
trained first), its DashengTokenizer-like high-dimensional counterpart and the noise-normalised
autoencoder are trained with one recipe, the dataset is encoded with each, a demo-size DiT is
trained on each latent space with sampling and scoring at evaluation steps, and
``OUT/compare-<profile>/report/`` gets the report. Nothing is downloaded: every model is either
trained here or ships in a pip package.

:data:`PROFILES` sets the size: ``default`` about 15 minutes on a 2-core CPU, ``quick`` about 3,
``long`` about an hour with three DiT seeds per arm. Running the command again reuses what is
finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lodit.config import resolve_config_path
from lodit.data.synthetic import DEFAULT_COUNTS, make_demo_dataset
from lodit.errors import LoditError
from lodit.files import read_json

DEMO_CONFIG = "configs/demo/demo.yaml"  # resolved against the shipped configs from any folder


@dataclass(frozen=True)
class Profile:
    """A demo size: the generated dataset, the number of adherence prompts and the experiment
    overrides on top of demo.yaml."""

    dataset: dict
    adherence_beeps: int  # captions of counted beeps generated and judged at every evaluation step
    overrides: tuple[str, ...]
    minutes: int  # on 2 idle cores: default 11.1 (up to ~13.4 on a slow day), quick 2.1, long 65 (RESULTS.md)


# Every profile adds counted beeps to the training sounds and judges the DiTs on as many more beep
# captions (a set of its own, ADHERENCE_SEED): the cycle of sound kinds gives one beep in six, too few
# to learn or to judge the count and the pitch a caption asks for.
PROFILES: dict[str, Profile] = {
    # A smoke run: fewer clips, steps and prompts, the smaller offline Whisper for FAD.
    "quick": Profile({"n_audio": 8, "n_music": 8, "n_speech": 6, "n_beeps": 4, "seconds": 2.0}, 6,
                     ("tokenizer_steps=100", "dit_steps=100", "eval_steps=[50,100]", "evaluation.num_prompts=6",
                      "evaluation.embedder.model=offline:tiny.en", "evaluation.reconstruction_clips=4",
                      "evaluation.audio_examples=2", "sampling.steps=8"), 3),
    "default": Profile({"n_audio": 24, "n_music": 24, "n_speech": 24, "n_beeps": 12, "seconds": 2.0}, 24, (), 15),
    # The real answer: more data and steps, three DiT seeds per arm (confidence intervals in the report);
    # about an hour: 65 minutes measured on 2 idle cores.
    "long": Profile({"n_audio": 48, "n_music": 48, "n_speech": 48, "n_beeps": 24, "seconds": 3.0}, 36,
                    ("tokenizer_steps=2000", "dit_steps=1000", "eval_steps=[250,500,1000]", "seeds=[0,1,2]",
                     "evaluation.num_prompts=16", "evaluation.reconstruction_clips=16"), 60),
}


ADHERENCE_SEED = 1  # added to the dataset seed: the judged beep captions are drawn apart from the training clips


def demo_dataset(folder: Path, sizes: dict, seed: int = 0) -> Path:
    """The demo dataset in ``folder`` (generated unless already there with these sizes); its manifest."""
    manifest = folder / "manifest.jsonl"
    settings = folder / "dataset.json"
    if manifest.is_file() and settings.is_file():
        made = read_json(settings)
        wanted = {group: sizes.get(f"n_{group}", 0) for group in DEFAULT_COUNTS}  # every generated group
        if made.get("seed") == seed and made.get("seconds") == sizes["seconds"] and made.get("counts") == wanted:
            return manifest
    return make_demo_dataset(folder, seed=seed, **sizes)


def run_demo(out: str | Path, *, profile: str = "default", config: str | Path | None = None, seed: int = 0) -> Path:
    """Dataset, then the comparison experiment at ``profile``'s size; returns the report folder."""
    from lodit.eval.compare import compare
    from lodit.eval.experiment_config import load_experiment

    out = Path(out)
    config_path = resolve_config_path(config or DEMO_CONFIG)
    if not config_path.is_file():
        raise LoditError(f"{config_path}: demo experiment config not found; pass --config with an experiment "
                         "YAML (the shipped one is configs/demo/demo.yaml; reinstall lodit if it is missing)")
    if profile not in PROFILES:
        raise LoditError(f"unknown demo profile {profile!r}; choose one of {', '.join(PROFILES)}")
    chosen = PROFILES[profile]
    manifest = demo_dataset(out / f"dataset-{profile}", chosen.dataset, seed)
    beeps = {"n_audio": 0, "n_music": 0, "n_speech": 0, "n_beeps": chosen.adherence_beeps,
             "seconds": chosen.dataset["seconds"]}
    judged = demo_dataset(out / f"adherence-{profile}", beeps, seed + ADHERENCE_SEED)
    overrides = [f"data.train_manifest={manifest.resolve()}", f"evaluation.adherence_manifest={judged.resolve()}",
                 *chosen.overrides]
    experiment = load_experiment(config_path, overrides)
    return compare(experiment, out / f"compare-{profile}")
