"""Evaluation: embedders, metrics (FAD, CLAP score, WER, speaker similarity, reconstruction,
probes, latent statistics), ``lodit evaluate`` and the latent-dimension comparison report.

May import all model code. Model code never imports this package.
"""
