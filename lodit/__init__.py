"""lodit: diffusion-transformer audio generation over compact continuous latents.

Subpackages (dependencies point one way, left to right):
``data``, ``training`` <- ``latent_tokenizer`` <- ``conditioning`` <- ``dit``/``samplers``
<- ``eval`` <- ``cli``.
"""

__version__ = "0.1.0"
