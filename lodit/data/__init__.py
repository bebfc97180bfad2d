"""Data: audio I/O, manifests, dataset builders, batching, the latent cache and the demo set.

May import: torch, numpy, soundfile, soxr, safetensors and the top-level helpers (``lodit.errors``,
``lodit.config``, ``lodit.registry``, ``lodit.files``, ``lodit.outputs``).
Must not import model code (``latent_tokenizer``, ``dit``, ...), ``eval`` or ``cli``.
"""
