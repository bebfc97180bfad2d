"""Writing and reading files safely: one helper for each way lodit touches the disk.

Every file lodit writes (configs, checkpoints, caches, metrics, reports, audio) goes through
:func:`write_atomically`: the bytes go to a hidden temporary file beside the target, which then
replaces the target in one rename. A crash, a full disk or Ctrl-C leaves the previous file (or no
file), never a half-written one. :func:`replace_folder` does the same for a whole folder, and
:func:`read_json` turns a broken JSON file into a one-line error that names it.

This module imports nothing from the rest of lodit but :mod:`lodit.errors`, so every layer may use it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from lodit.errors import LoditError

# Folders being written (or moved aside) carry this prefix until they are complete; owners of a
# folder of such folders (checkpoints/) delete leftovers of killed writes by it.
TEMP_PREFIX = ".tmp-"
# What the temporary files of :func:`write_atomically` look like (hidden, ``.tmp`` in the name).
TEMP_FILE_GLOB = ".*.tmp*"


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any], *, sync: bool = False) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    The temporary file keeps ``path``'s suffix (writers such as soundfile pick the format from it)
    and gets the permissions an ordinary new file would. ``sync``: flush it to the disk before the
    rename (for files whose loss after a power cut would cost hours). On any failure the temporary
    file is removed, ``path`` is left as it was and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; an output is an ordinary file
        write(tmp)
        if sync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, *, sync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), sync=sync)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2, allow_nan: bool = False) -> Path:
    """Write ``data`` as JSON (UTF-8, one trailing newline) to ``path`` atomically.

    NaN and infinities are refused (a ValueError): they are not JSON and other tools can't read
    them. ``allow_nan=True`` writes them as JavaScript's ``NaN``/``Infinity`` (Python reads them back).
    """
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=allow_nan) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line to ``path`` atomically."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | os.PathLike, *, hint: str | None = None, missing: str | None = None) -> Any:
    """The parsed JSON of ``path``.

    A file that is not JSON (or not UTF-8) raises :class:`InvalidJSON`, a :class:`LoditError`
    reading ``"<path>: not valid JSON (<reason>)[; <hint>]"``. A missing file raises
    ``FileNotFoundError`` unless ``missing`` gives the message of the LoditError to raise instead.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is None:
            raise
        raise LoditError(missing) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(path, f"{exc.msg} at line {exc.lineno}", hint) from None
    except ValueError as exc:  # a JSON text must be UTF-8
        raise InvalidJSON(path, str(exc), hint) from None
    except RecursionError:
        raise InvalidJSON(path, "nested too deeply", hint) from None


class InvalidJSON(LoditError):
    """A file that should hold JSON does not; ``reason`` says why, ``path`` names it."""

    def __init__(self, path: Path, reason: str, hint: str | None = None):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: not valid JSON ({reason})" + (f"; {hint}" if hint else ""))


def replace_folder(source: Path, folder: Path) -> None:
    """Rename the finished folder ``source`` to ``folder``, replacing what is there.

    ``os.replace`` cannot overwrite a non-empty folder, so an existing ``folder`` is first moved
    aside (and deleted once ``source`` is in place); if that rename fails the old one goes back.
    """
    if not folder.exists():
        os.replace(source, folder)
        return
    old = folder.with_name(f"{TEMP_PREFIX}old-{folder.name}-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder, old)
    try:
        os.replace(source, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
