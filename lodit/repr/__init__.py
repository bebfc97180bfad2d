"""Representation encoders trained over a tokenizer's latents (F3's RQ-MTP encoder): their features
are what understanding probes read, while the latents stay the generation target.

May import: ``lodit.data``, ``lodit.training``, ``lodit.latent_tokenizer``, ``lodit.conditioning``.
Must not import ``dit``, ``samplers``, ``eval`` or ``cli``.
"""
