"""The DiT generator: the network, the flow-matching objective and DiT training.

May import: ``lodit.data``, ``lodit.training``, ``lodit.latent_tokenizer``, ``lodit.conditioning``,
``lodit.samplers``. Must not import ``eval``, ``app``, ``commands`` or ``cli``.
"""
