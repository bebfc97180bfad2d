"""Latent tokenizers (audio <-> latent frames): front-ends, encoders, decoders, bottlenecks,
semantic encoders, SemBo, LoSATok, losses, discriminators and tokenizer training.

May import: ``lodit.data``, ``lodit.training`` (loading weights imports no accelerate: that comes
with the Trainer only). Must not import ``dit``, ``samplers``, ``eval``, ``app``, ``commands``, ``cli``.
"""
