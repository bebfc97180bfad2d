"""The latent cache: a dataset pre-encoded by a tokenizer, written once and streamed shard by shard.

Layout of a cache folder::

    meta.json                  format, version, producer (tokenizer identity), counts, dim, dtype, shard list
    index.jsonl                one row per clip: key, shard (file name), offset and length in frames, fields
    stats.json                 per-channel mean and std (population) over every frame, with the frame count
    shard-00000.safetensors    ONE tensor "latents" (frames, dim): its clips concatenated along frames,
    shard-00001.safetensors    in index order; its own index rows are also in the file's metadata
    ...

A shard closes once it holds ``shard_frames`` frames (by default ~``shard_mb`` MiB); clips are
never split across shards. Statistics are accumulated exactly in float64 with Chan et al.'s
pairwise update, one clip at a time, over the values as stored (after any dtype rounding).

Writes are atomic: everything goes to ``<root>.tmp-<pid>`` and is renamed to ``<root>`` by
:meth:`LatentCacheWriter.close`; ``meta.json`` is written last, so a folder without it is never
read as a cache. Each shard carries its index rows, and until its shard is written each clip is
also kept as ``pending-<shard>-<clip>.safetensors``, so an interrupted encode can be resumed from
every clip it finished (``resume=True``), with the same final files as an uninterrupted one.

The producer (``name``, ``config_hash``, ``latent_dim``, ``frame_rate``, ``sample_rate``)
identifies the tokenizer; :meth:`LatentCache.check_producer` refuses a cache made by another.
Reading opens one shard at a time, memory-mapped (``safetensors.safe_open``), so memory does not
grow with the dataset.

One job per module: :mod:`~lodit.data.latent_cache.format` (the names writer and reader share),
:mod:`~lodit.data.latent_cache.stats` (running statistics, and the normalisation the DiT uses),
:mod:`~lodit.data.latent_cache.writer`, :mod:`~lodit.data.latent_cache.reader` and
:mod:`~lodit.data.latent_cache.dataset` (the training view). Their public names are importable
from this package.
"""

from lodit.data.latent_cache.dataset import LatentDataset, collate_latents
from lodit.data.latent_cache.format import CACHE_FORMAT, CACHE_VERSION, PRODUCER_FIELDS, TENSOR_NAME
from lodit.data.latent_cache.reader import LatentCache, LatentItem
from lodit.data.latent_cache.stats import STD_FLOOR, RunningStats, denormalize, normalize
from lodit.data.latent_cache.writer import LatentCacheWriter

__all__ = [
    "CACHE_FORMAT", "CACHE_VERSION", "PRODUCER_FIELDS", "STD_FLOOR", "TENSOR_NAME", "LatentCache", "LatentCacheWriter",
    "LatentDataset", "LatentItem", "RunningStats", "collate_latents", "denormalize", "normalize",
]
