"""Data: audio I/O, manifests, dataset builders, batching, the latent cache and the demo set.

May import: torch, numpy, soundfile, soxr, safetensors and ``lodit.errors``/``lodit.config``/``lodit.registry``.
Must not import model code (``latent_tokenizer``, ``dit``, ...), ``eval`` or ``cli``.
"""
