"""Checkpoint and savepoint storage on the filesystem.

Layout under the job's checkpoint directory::

    chk-00000042/            one completed checkpoint
        _metadata.json       the manifest: id, kind, max parallelism, backend, per-operator state
        <uid>-<subtask>.state  keyed state of one operator subtask (backend snapshot)
    savepoints/sp-00000043/  savepoints have the same shape, and retention never deletes them

A checkpoint is written into ``<name>.inprogress/`` and becomes visible in one atomic
``os.replace`` of the directory after its manifest was fsynced, so a directory without the
``.inprogress`` suffix is always complete: a crash leaves at most an ``.inprogress`` directory,
which is deleted on the next start. Only the last ``retained`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from twingraph.errors import CheckpointError

MANIFEST = "_metadata.json"
_CHK = re.compile(r"^chk-(\d+)$")
_SP = re.compile(r"^sp-(\d+)$")


class CheckpointStorage:
    def __init__(self, directory: str | os.PathLike[str], retained: int = 3, fsync: bool = True) -> None:
        self.root = Path(directory)
        self.fsync = fsync
        self.retained = max(1, retained)
        self.savepoints = self.root / "savepoints"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint directory {self.root}: {exc}") from exc
        for stale in self.root.glob("*.inprogress"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.savepoints.exists():
            for stale in self.savepoints.glob("*.inprogress"):
                shutil.rmtree(stale, ignore_errors=True)

    def final_dir(self, checkpoint_id: int, savepoint: bool) -> Path:
        if savepoint:
            return self.savepoints / f"sp-{checkpoint_id:08d}"
        return self.root / f"chk-{checkpoint_id:08d}"

    def begin(self, checkpoint_id: int, savepoint: bool) -> Path:
        """Create and return the in-progress directory where operators write their files."""
        d = Path(str(self.final_dir(checkpoint_id, savepoint)) + ".inprogress")
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def complete(self, checkpoint_id: int, savepoint: bool, manifest: dict[str, Any]) -> Path:
        """Write the manifest, fsync, and publish the directory atomically; apply retention."""
        tmp = Path(str(self.final_dir(checkpoint_id, savepoint)) + ".inprogress")
        final = self.final_dir(checkpoint_id, savepoint)
        try:
            data = json.dumps(manifest, separators=(",", ":")).encode()
            with open(tmp / MANIFEST, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            if self.fsync:
                for p in tmp.iterdir():
                    if p.name != MANIFEST:
                        _fsync_file(p)
            os.replace(tmp, final)
            if self.fsync:
                _fsync_dir(final.parent)
        except OSError as exc:
            raise CheckpointError(f"cannot complete checkpoint {checkpoint_id} in {final}: {exc}") from exc
        if not savepoint:
            for old in self.completed()[:-self.retained]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def abort(self, checkpoint_id: int, savepoint: bool) -> None:
        shutil.rmtree(str(self.final_dir(checkpoint_id, savepoint)) + ".inprogress", ignore_errors=True)

    def completed(self) -> list[Path]:
        """Completed checkpoints, oldest first."""
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if p.is_dir() and (m := _CHK.match(p.name)) and (p / MANIFEST).exists()]
        return [p for _, p in sorted(found)]

    def highest_id(self) -> int:
        """The largest checkpoint or savepoint id in the directory (0 if none), so that a run
        restored from an older one never reuses, overwrites or retires a newer one's id."""
        ids = [int(m.group(1)) for p in self.root.iterdir() if (m := _CHK.match(p.name))]
        if self.savepoints.exists():
            ids += [int(m.group(1)) for p in self.savepoints.iterdir() if (m := _SP.match(p.name))]
        return max(ids, default=0)

    def latest(self) -> Path | None:
        done = self.completed()
        return done[-1] if done else None


def read_manifest(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Load a checkpoint or savepoint directory's manifest (``path`` may name the directory or the file)."""
    p = Path(path)
    if p.name == MANIFEST:
        p = p.parent
    try:
        return p, json.loads((p / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p} is not a readable checkpoint or savepoint: {exc}") from exc


def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
