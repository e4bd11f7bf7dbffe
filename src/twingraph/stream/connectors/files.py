"""File source (lines of text files) and an exactly-once file sink (one part file per checkpoint).

FileSource: each file is a split; subtask ``i`` of ``p`` reads the files whose index in the sorted
list satisfies ``index % p == i``. Its position is the byte offset reached in each file, so a
restore (with any parallelism: offsets of all old subtasks are merged) resumes after the last line
that was handed out.

FileSink: records are encoded as lines (``encoder(value) + "\\n"``). Between two checkpoints a
subtask writes a hidden ``.<token>-<subtask>-<seq>.inprogress`` file; ``pre_commit(N)`` fsyncs it
and renames it to ``.<token>-<subtask>-<N>.pending``; ``commit(N)`` renames that to the visible
``part-<N>-<subtask>-<token>``. A reader that lists the non-hidden files sees exactly the output of
completed checkpoints. On open, in-progress files of earlier attempts are deleted, and so are
pending files of checkpoints after the restored one (they never completed); the restored
checkpoint's pending files are kept, and the runtime's second ``commit`` publishes them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from twingraph.errors import CheckpointError
from twingraph.stream.connectors.base import SourceSplitContext

_PENDING = re.compile(r"^\.[0-9a-f]+-\d+-(\d+)\.pending$")


def _expand(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith("."))
        else:
            out.append(str(p))
    return sorted(out)


class FileSource:
    """Lines (without the newline) of the given files, in file order; bounded."""

    bounded = True

    def __init__(self, path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], encoding: str = "utf-8") -> None:
        self.path, self.encoding = path, encoding

    def open(self, ctx: SourceSplitContext) -> None:
        files = _expand(self.path)
        self.files = [f for i, f in enumerate(files) if i % ctx.parallelism == ctx.subtask_index]
        offsets: dict[str, int] = {}
        state = ctx.restored or {}
        for part in state.get("subtasks", [state]):
            offsets.update(part.get("offsets", {}))
        self.offsets = {f: int(offsets.get(f, 0)) for f in self.files}
        self._idx = 0
        self._fh: IO[bytes] | None = None

    def poll(self, max_records: int) -> list[tuple[Any, int | None]]:
        out: list[tuple[Any, int | None]] = []
        while len(out) < max_records and self._idx < len(self.files):
            name = self.files[self._idx]
            if self._fh is None:
                self._fh = open(name, "rb")
                self._fh.seek(self.offsets[name])
            pos, enc, fh = self.offsets[name], self.encoding, self._fh
            for _ in range(max_records - len(out)):
                line = fh.readline()
                if not line:
                    fh.close()
                    self._fh = None
                    self._idx += 1
                    break
                pos += len(line)
                out.append((line.rstrip(b"\n").decode(enc), None))
            self.offsets[name] = pos
        return out

    def finished(self) -> bool:
        return self._idx >= len(self.files)

    def snapshot(self, checkpoint_id: int) -> dict:
        return {"offsets": dict(self.offsets)}

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        return None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class FileSink:
    """Exactly-once line files in ``directory``; see the module docstring for the protocol."""

    def __init__(self, directory: str | os.PathLike[str], encoder: Callable[[Any], str] = str,
                 fsync: bool = True) -> None:
        self.directory, self.encoder, self.fsync = Path(directory), encoder, fsync

    def open(self, ctx: SourceSplitContext) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.subtask = ctx.subtask_index
        self.token = uuid.uuid4().hex[:12]
        self._seq = 0
        self._fh: IO[str] | None = None
        self._current: Path | None = None
        restored = ctx.restored_checkpoint_id
        for f in self.directory.iterdir():
            if f.name.endswith(".inprogress"):
                f.unlink(missing_ok=True)
            elif (m := _PENDING.match(f.name)) and (restored is None or int(m.group(1)) > restored):
                f.unlink(missing_ok=True)

    def write(self, records: list[Any]) -> None:
        if self._fh is None:
            self._seq += 1
            self._current = self.directory / f".{self.token}-{self.subtask}-{self._seq}.inprogress"
            self._fh = open(self._current, "w", encoding="utf-8")
        enc = self.encoder
        self._fh.write("".join([enc(r) + "\n" for r in records]))

    def pre_commit(self, checkpoint_id: int) -> dict:
        if self._fh is None or self._current is None:
            return {"checkpoint_id": checkpoint_id, "pending": []}
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        pending = f".{self.token}-{self.subtask}-{checkpoint_id}.pending"
        final = f"part-{checkpoint_id:08d}-{self.subtask}-{self.token}"
        os.replace(self._current, self.directory / pending)
        return {"checkpoint_id": checkpoint_id, "pending": [[pending, final]]}

    def commit(self, checkpoint_id: int, state: dict) -> None:
        for part in state.get("subtasks", [state]):
            for pending, final in part.get("pending", []):
                src, dst = self.directory / pending, self.directory / final
                if src.exists():
                    os.replace(src, dst)
                elif not dst.exists():
                    raise CheckpointError(f"file sink: staged output {src} of checkpoint "
                                          f"{checkpoint_id} is gone and was never published")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_committed(directory: str | os.PathLike[str]) -> list[str]:
    """All committed lines of a FileSink directory, part files in checkpoint order."""
    d = Path(directory)
    lines: list[str] = []
    for f in sorted(p for p in d.iterdir() if p.name.startswith("part-")):
        lines.extend(f.read_text(encoding="utf-8").splitlines())
    return lines
