"""What a latent cache folder holds: the names and values its writer and reader share (see the package docstring)."""

from __future__ import annotations

import torch

CACHE_FORMAT = "lodit-latent-cache"
CACHE_VERSION = 1
PRODUCER_FIELDS = ("name", "config_hash", "latent_dim", "frame_rate", "sample_rate")
TENSOR_NAME = "latents"
SHARD_INDEX_KEY = "lodit_index"  # safetensors metadata entry holding a shard's own index rows
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


