"""Checks that an output location can be written, made before any long work starts.

A command that trains for an hour and then finds that ``--out`` is a file, sits on a read-only
disk or in a folder without write permission has wasted that hour. :func:`check_output_folder`
and :func:`check_output_file` answer up front, with a :class:`~lodit.errors.LoditError` that
names the path, the option and the fix. Writability is probed by creating (and at once removing)
a hidden file in the nearest existing folder: permission bits alone say nothing for root, on
read-only mounts or for immutable folders. Nothing is left behind and nothing is created.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from lodit.errors import LoditError


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Raise unless ``path`` is (or can become) a folder this process can write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoditError(f"{option} {path}: exists and is a file, not a folder; give a folder path "
                         "(a new one, or an existing run folder)")
    _check_writable_ancestor(path, option)
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Raise unless ``path`` is a file name this process can create or replace."""
    path = Path(path)
    if path.is_dir():
        raise LoditError(f"{option} {path}: is a folder; give the name of a file to write")
    _check_writable_ancestor(path.parent if str(path.parent) else Path("."), option, target=path)
    return path


def _check_writable_ancestor(path: Path, option: str, target: Path | None = None) -> None:
    target = target or path
    folder = path
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise LoditError(f"{option} {target}: {folder} is a file, so no folder can be made under it; "
                         "choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lodit-write-check-", dir=folder)
    except OSError as exc:
        raise LoditError(f"{option} {target}: cannot write into {folder} ({_why(exc)}); "
                         "choose a folder you can write to, or fix its permissions") from None
    os.close(fd)
    os.unlink(probe)


def _why(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or type(exc).__name__
