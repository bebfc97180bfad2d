"""The shape of a ``lodit compare`` folder: where each stage's output lives, in one place.

The experiment runner writes these paths, the report and the app read them; none of them spells a
path of its own. Also here: the metric names of the two TTS variants, which the runner's score
files and the report share.

    OUT/experiment.yaml   resolved config           OUT/stages.jsonl   stage log
    OUT/data/             train.jsonl, eval.jsonl   OUT/embeddings/    embedding cache
    OUT/teacher_cache/    teacher features       OUT/sembo/<spec hash>/  SemBo run (final/)
    OUT/arms/<arm>/tokenizer/        tokenizer run (final/ = the tokenizer)
    OUT/arms/<arm>/cache/            latent cache of the training set
    OUT/arms/<arm>/reconstruction/   metrics.json
    OUT/arms/<arm>/latent_stats/     stats.json
    OUT/arms/<arm>/seed-<s>/dit/     DiT run (checkpoints/step-*)
    OUT/arms/<arm>/seed-<s>/step-<k>/samples/  prompts.jsonl, references.json, wavs + samples.json
    OUT/arms/<arm>/seed-<s>/step-<k>/samples_with_reference/  the TTS prompts with a voice: voices/ + voices.json
    OUT/arms/<arm>/seed-<s>/step-<k>/adherence_samples/  the captions of evaluation.adherence_manifest
    OUT/arms/<arm>/seed-<s>/step-<k>/scores/   metrics.json
    OUT/understanding/    metrics.json of the optional understanding section (probes, clustering)
    OUT/report/           results.json, report.md, report.html, *.png, audio/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METRICS_FILE = "metrics.json"
LATENT_STATS_FILE = "stats.json"
SAMPLES_INDEX = "samples.json"  # written by lodit.dit.prompts.sample_to_folder
REFERENCES_FILE = "references.json"

# TTS is evaluated twice, as F5-TTS can be used: with a reference voice and from the transcript
# alone. Metric names of each variant in the scores and results, and what they measure.
TTS_VARIANTS = {
    "without_reference": {
        "wer": "wer", "speaker_similarity": "speaker_similarity",
        "description": "transcript only, no reference voice (the model chooses the voice); speaker SIM "
                       "against the held-out clip of the same sentence",
    },
    "with_reference": {
        "wer": "wer_with_reference", "speaker_similarity": "speaker_similarity_with_reference",
        "description": "transcript plus a reference voice: another clip of the held-out clip's speaker (from "
                       "the evaluation set, else the training set) and its transcript; speaker SIM against "
                       "that reference clip",
    },
}


@dataclass(frozen=True)
class ExperimentLayout:
    """Where each stage of the experiment folder ``out`` lives (see the module docstring)."""

    out: Path

    # -- the whole experiment
    @property
    def config_copy(self) -> Path:
        return self.out / "experiment.yaml"

    @property
    def stage_log(self) -> Path:
        return self.out / "stages.jsonl"

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def train_manifest(self) -> Path:
        return self.data_dir / "train.jsonl"

    @property
    def eval_manifest(self) -> Path:
        return self.data_dir / "eval.jsonl"

    @property
    def embeddings(self) -> Path:
        return self.out / "embeddings"

    @property
    def teacher_cache(self) -> Path:
        return self.out / "teacher_cache"

    def sembo_dir(self, key: str) -> Path:
        return self.out / "sembo" / key

    @property
    def understanding_dir(self) -> Path:
        return self.out / "understanding"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    @property
    def results_file(self) -> Path:
        return self.report_dir / "results.json"

    # -- one arm
    @property
    def arms_dir(self) -> Path:
        return self.out / "arms"

    def arm_dir(self, arm: str) -> Path:
        return self.arms_dir / arm

    def tokenizer_run(self, arm: str) -> Path:
        return self.arm_dir(arm) / "tokenizer"

    def cache_dir(self, arm: str) -> Path:
        return self.arm_dir(arm) / "cache"

    def reconstruction_dir(self, arm: str) -> Path:
        return self.arm_dir(arm) / "reconstruction"

    def latent_stats_dir(self, arm: str) -> Path:
        return self.arm_dir(arm) / "latent_stats"

    # -- one arm and seed
    def seed_dir(self, arm: str, seed: int) -> Path:
        return self.arm_dir(arm) / f"seed-{seed}"

    def dit_run(self, arm: str, seed: int) -> Path:
        return self.seed_dir(arm, seed) / "dit"

    def step_dir(self, arm: str, seed: int, step: int) -> Path:
        return self.seed_dir(arm, seed) / f"step-{step:08d}"

    def samples_dir(self, arm: str, seed: int, step: int) -> Path:
        return self.step_dir(arm, seed, step) / "samples"

    def voice_samples_dir(self, arm: str, seed: int, step: int) -> Path:
        return self.step_dir(arm, seed, step) / "samples_with_reference"

    def adherence_samples_dir(self, arm: str, seed: int, step: int) -> Path:
        return self.step_dir(arm, seed, step) / "adherence_samples"

    def scores_dir(self, arm: str, seed: int, step: int) -> Path:
        return self.step_dir(arm, seed, step) / "scores"
