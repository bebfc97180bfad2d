"""Latent tokenizers (audio <-> latent frames): front-ends, encoders, decoders, bottlenecks,
semantic encoders, SemBo, LoSATok, losses, discriminators and tokenizer training.

May import: ``lodit.data``, ``lodit.training``. Must not import ``dit``, ``samplers``, ``eval``, ``cli``.
"""
