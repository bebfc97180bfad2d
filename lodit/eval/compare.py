"""``lodit compare``: run a latent-dimension comparison experiment and write its report.

``lodit compare --config configs/experiments/dim_1280_vs_128.yaml data.train_manifest=M`` runs
every stage the output folder does not hold yet (tokenizer training, encoding, DiT training with
sampling and scoring at each evaluation step) and writes ``OUT/report/`` (see
:mod:`lodit.eval.experiment` for the stages and :mod:`lodit.eval.report` for the report). Running
the same command again reuses everything finished and continues what was interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path

from lodit.eval.experiment import ExperimentRunner
from lodit.eval.experiment_config import ExperimentConfig


def compare(config: ExperimentConfig, out: str | os.PathLike) -> Path:
    """Run (or resume) the experiment into ``out``; returns the report folder. Its stages are
    reported through :mod:`logging` (see :mod:`lodit.status`)."""
    return ExperimentRunner(config, out).run()
