"""Evaluation: embedders, metrics (FAD, CLAP score, WER, speaker similarity, reconstruction,
probes, latent statistics), the :class:`~lodit.eval.evaluate.Evaluator` behind ``lodit evaluate``,
and the latent-dimension comparison: its config (``experiment_config``), folder layout
(``layout``), stage bookkeeping (``stages``), runner (``experiment``) and report (``report``,
with ``summary`` statistics, ``tables`` and the HTML ``templates``).

May import all model code. Model code never imports this package.
"""
