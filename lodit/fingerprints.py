"""Short identities for caches: equal fingerprints mean "the same weights" or "the same files".

Caches (text states, embeddings, teacher features) key their entries by the identity of the model
that produced them, so entries of other weights are never served. Two meanings, two functions:

- :func:`weights_fingerprint`: a SHA-256 of a module's tensors (exact; costs one pass over the weights);
- :func:`files_fingerprint`: names, sizes and modification times of a folder's files (cheap; it
  changes whenever the weights on disk do, and also when they are merely rewritten).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short SHA-256 of ``module``'s state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def files_fingerprint(folder: Path) -> str:
    """A short SHA-256 of the names, sizes and modification times of the files in ``folder``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]
