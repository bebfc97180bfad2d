"""lodit: diffusion-transformer audio generation over compact continuous latents.

Subpackages (dependencies point one way, left to right):
``data``, ``training`` <- ``latent_tokenizer`` <- ``conditioning`` <- ``dit``/``samplers``
<- ``eval`` <- ``app`` <- ``commands`` <- ``cli``. Every layer may use the top-level helpers, which
import no subpackage: ``errors``, ``config``, ``registry``, ``files`` (atomic writes, JSON),
``devices`` (device choice), ``fingerprints``, ``outputs`` (writable outputs), ``cores`` (threads),
``status`` (how log messages are shown).
"""

__version__ = "0.1.0"
