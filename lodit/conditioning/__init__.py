"""Conditioning: text encoders for captions, the TTS text front-end, speaker/audio prompts,
and duration handling.

May import: ``lodit.data``, ``lodit.training``, ``lodit.latent_tokenizer``.
"""
