"""Stage bookkeeping of an experiment folder: which stage outputs are finished, for which settings.

Each stage folder holds ``stage.json`` with a hash of everything its output depends on and its
status; :class:`StageBook` reuses a ``done`` stage with the same hash, keeps a ``running`` one to
continue, and deletes one made with other settings. Every start and reuse is appended to the
experiment's ``stages.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from lodit.eval.layout import (
    ExperimentLayout,
)
from lodit.files import write_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


def spec_hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: str | os.PathLike) -> str:
    """Content hash of a (manifest) file: moving the experiment does not invalidate its stages."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


class StageBook:
    """``stage.json`` markers of the stage folders and the experiment's stage log."""

    def __init__(self, root: Path):
        self.root = root
        # unique even for two runs of one process within a second (the log groups entries by it)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"

    def is_done(self, folder: Path, spec: Any) -> bool:
        """True if ``folder`` holds this spec's finished output. A folder made with another spec is
        deleted (its outputs are stale); one left ``running`` by this spec is kept to continue."""
        marker = folder / STAGE_FILE
        if not marker.is_file():
            return False
        try:
            state = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            state = {}
        if state.get("spec_hash") == spec_hash(spec):
            return state.get("status") == "done"
        log.info(f"{folder}: made with other settings; redoing it")
        shutil.rmtree(folder)
        return False

    def start(self, folder: Path, spec: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / STAGE_FILE, {"status": "running", "spec_hash": spec_hash(spec), "spec": spec})

    def finish(self, name: str, folder: Path, spec: Any, seconds: float) -> None:
        write_json(folder / STAGE_FILE, {"status": "done", "spec_hash": spec_hash(spec), "spec": spec,
                                         "seconds": round(seconds, 3)})
        self.log(name, "ran", seconds)

    def log(self, name: str, action: str, seconds: float = 0.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"run": self.run_id, "stage": name, "action": action, "seconds": round(seconds, 3),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(ExperimentLayout(self.root).stage_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def read_stage_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = ExperimentLayout(Path(out_dir)).stage_log
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
