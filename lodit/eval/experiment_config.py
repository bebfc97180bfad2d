"""The configuration of a latent-dimension comparison (:class:`ExperimentConfig`) and reading it from YAML.

See :mod:`lodit.eval.experiment` for what the runner does with each section. Paths inside the
experiment YAML are relative to the YAML's folder; paths given as command-line overrides are
relative to the working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lodit.config import (
    apply_overrides,
    from_dict,
    load_yaml,
    resolve_config_path,
)
from lodit.eval.evaluate import EvaluationConfig
from lodit.eval.understanding import UnderstandingConfig
from lodit.samplers.guidance import GuidanceConfig
from lodit.samplers.sample import SamplerConfig

_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ArmConfig:
    """One tokenizer under test: a training config (+ overrides) or an existing tokenizer folder."""

    name: str = ""
    tokenizer: str = ""  # tokenizer training config (YAML), trained by the experiment
    overrides: list[str] = field(default_factory=list)  # key.sub=value overrides of that config
    checkpoint: str = ""  # an already trained tokenizer folder (its final/ or a checkpoint); nothing is trained
    description: str = ""  # shown in the report
    # A SemBo training config (YAML) trained first (on the training set, once per distinct config
    # across arms); its final/ becomes the tokenizer's tokenizer.encoder.semantic.sembo (LoSATok arms).
    sembo: str = ""
    sembo_overrides: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not _ARM_NAME.match(self.name):
            raise ValueError(f"arm name {self.name!r} must be a non-empty folder name (letters, digits, _ . -)")
        if bool(self.tokenizer) == bool(self.checkpoint):
            raise ValueError(f"arm {self.name!r} needs exactly one of tokenizer (a config to train) "
                             "or checkpoint (a trained folder)")
        if self.sembo and not self.tokenizer:
            raise ValueError(f"arm {self.name!r}: sembo is trained for a tokenizer config; drop it or set tokenizer")


@dataclass
class DiTSpec:
    config: str = ""  # DiT training config (YAML), shared by every arm
    overrides: list[str] = field(default_factory=list)


@dataclass
class ExperimentData:
    train_manifest: str = ""
    eval_manifest: str = ""  # the reference set; "" = hold out eval_fraction of train_manifest
    eval_fraction: float = 0.1  # per domain, at least one clip of every domain with two or more
    split_seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction must be between 0 and 1, got {self.eval_fraction}")


@dataclass
class SamplingSettings(SamplerConfig):
    """How every arm's DiT samples: a :class:`SamplerConfig` (solver, steps, schedule, guidance,
    the same for all arms) plus the batch size, the first seed and which weights."""

    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(scale=3.0))
    batch_size: int = 8
    seed: int = 0  # noise seed of the first prompt (prompt i uses seed + i)
    use_ema: bool = True


@dataclass
class ExperimentEvaluation(EvaluationConfig):
    """The metric models (:class:`EvaluationConfig`) plus what is evaluated."""

    num_prompts: int = 16  # evaluation prompts (from the evaluation set, round-robin over tasks)
    seconds: float = 0.0  # length of caption samples; 0 = the reference clip's length (TTS: the speaking rate)
    reconstruction_clips: int = 16  # evaluation clips in the reconstruction table (0 = all)
    audio_examples: int = 3  # prompts per arm with audio players in the report
    # A labelled manifest (e.g. `lodit make-dataset --counts beeps=24`) whose captions are also
    # generated at every evaluation step and judged for text adherence only (no FAD, no ASR): for
    # caption attributes the evaluation set holds too few clips of to judge. "" = none.
    adherence_manifest: str = ""

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError(f"evaluation.num_prompts must be at least 1, got {self.num_prompts}")
        if self.seconds < 0 or self.reconstruction_clips < 0 or self.audio_examples < 0:
            raise ValueError("evaluation.seconds, reconstruction_clips and audio_examples must not be negative")

    def metric_config(self) -> EvaluationConfig:
        return EvaluationConfig(**{f.name: getattr(self, f.name) for f in fields(EvaluationConfig)})


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    arms: list[ArmConfig] = field(default_factory=list)
    dit: DiTSpec = field(default_factory=DiTSpec)
    data: ExperimentData = field(default_factory=ExperimentData)
    tokenizer_steps: int = 0  # tokenizer training steps; 0 = each tokenizer config's training.max_steps
    dit_steps: int = 1000
    eval_steps: list[int] = field(default_factory=list)  # DiT steps evaluated; dit_steps is always added
    seeds: list[int] = field(default_factory=lambda: [0])  # DiT training seeds (one DiT per arm and seed)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    evaluation: ExperimentEvaluation = field(default_factory=ExperimentEvaluation)
    # probes and token-histogram clustering of tokenizers' representations (lodit.eval.understanding)
    understanding: UnderstandingConfig | None = None

    def __post_init__(self):
        if not self.arms:
            raise ValueError("arms: list at least one arm (name + tokenizer config or checkpoint)")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if self.dit_steps < 1 or self.tokenizer_steps < 0:
            raise ValueError("dit_steps must be at least 1 and tokenizer_steps not negative")
        bad = [k for k in self.eval_steps if not 1 <= k <= self.dit_steps]
        if bad:
            raise ValueError(f"eval_steps {bad} lie outside 1..dit_steps ({self.dit_steps})")
        self.eval_steps = sorted(set(self.eval_steps) | {self.dit_steps})
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must list at least one seed, each once; got {self.seeds}")


# Keys holding file paths; in the YAML they are relative to the YAML's folder.
_PATH_KEYS = (("dit", "config"), ("data", "train_manifest"), ("data", "eval_manifest"),
              ("evaluation", "adherence_manifest"))
ARM_PATH_KEYS = ("tokenizer", "checkpoint", "sembo")


def load_experiment(path: str | os.PathLike, overrides: list[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML: its relative paths resolved against its folder, then the
    command-line ``overrides`` applied (their relative paths stay relative to the working directory)."""
    path = resolve_config_path(path)
    data = load_yaml(path)
    base = path.resolve().parent
    for section, key in _PATH_KEYS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            node[key] = _absolute(node[key], base)
    for arm in data.get("arms") or []:
        for key in ARM_PATH_KEYS:
            if isinstance(arm, dict) and isinstance(arm.get(key), str) and arm[key]:
                arm[key] = _absolute(arm[key], base)
    _absolute_understanding_paths(data.get("understanding"), base)
    sampling = data.get("sampling")
    if isinstance(sampling, dict) and "cfg" in sampling:
        # configs written before the experiment used SamplerConfig name the guidance scale `cfg`
        sampling.setdefault("guidance", {})["scale"] = sampling.pop("cfg")
    data = apply_overrides(data, list(overrides))
    where = str(path) if not overrides else f"{path} (with command-line overrides)"
    return from_dict(ExperimentConfig, data, source=where)


def _absolute_understanding_paths(node: Any, base: Path) -> None:
    """The understanding section's manifests and model folders relative to the YAML (a teacher's
    model is a model name, left as it is)."""
    if not isinstance(node, dict):
        return
    if isinstance(node.get("speech_manifest"), str) and node["speech_manifest"]:
        node["speech_manifest"] = _absolute(node["speech_manifest"], base)
    for task in node.get("tasks") or []:
        if isinstance(task, dict) and isinstance(task.get("manifest"), str) and task["manifest"]:
            task["manifest"] = _absolute(task["manifest"], base)
    for spec in node.get("representations") or []:
        is_folder = isinstance(spec, dict) and spec.get("kind") != "teacher"  # a teacher's model is a model name
        if is_folder and isinstance(spec.get("model"), str) and spec["model"]:
            spec["model"] = _absolute(spec["model"], base)


def _absolute(value: str, base: Path) -> str:
    candidate = Path(os.path.expanduser(value))
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())
