"""The recorder's batches written by a child process (decision 0012).

In a large run the recorder's Python — checking results, building rows, the key filter, binding
parameters — held the GIL about a third of the time the scheduler needed it. A child process
(``stores.writer_child``) does that work on the other core; this process only packs each batch
into tuples and pickles it (``core.wire``), a fraction of the cost.

Only stores that another process can open again take part: a ``reopen_recipe()`` (the SQLite
result store, the SQL metadata store on a file or a server). A batch holding a result larger than
``INLINE_MAX`` is written in this process, so large arrays are not copied through a pipe.

Batches go down one pipe and are applied in order. The recorder packs the next batch while the
child writes one, then collects that one's answer: at most two are unanswered. If the child
dies, sending or receiving raises ``WriterGone`` and the recorder writes every unanswered batch
itself, in order: results and task rows are upserts, so a batch the child had partly applied is
written again without harm (its log lines may appear twice).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twingraph.core.wire import frame, pack, read_frame
from twingraph.errors import StorageError

#: Results larger than this (bytes) are written in this process, with their whole batch.
INLINE_MAX = 256 * 1024
#: Records and results per frame: a larger batch goes as several (the child holds one at a
#: time; at 10,000 its peak memory was ~110 MB, at 4,096 ~?).
FRAME_MAX = 4096


class WriterGone(Exception):
    """The writer process ended, or cannot be reached."""


def recipes(results: Any, metadata: Any) -> tuple[Any, Any] | None:
    """How the child opens the same stores, or None if one of them cannot be opened there
    (or there is nothing to write)."""
    out: list[Any] = []
    for store in (results, metadata):
        if store is None:
            out.append(None)
            continue
        get = getattr(store, "reopen_recipe", None)
        recipe = get() if get is not None else None
        if recipe is None:
            return None
        out.append(recipe)
    return None if out == [None, None] else (out[0], out[1])


class WriterProcess:
    """One child process; ``write`` from one thread at a time (the recorder's)."""

    def __init__(self, results_recipe: Any, metadata_recipe: Any) -> None:
        import twingraph
        env = dict(os.environ)
        # The child imports this same twingraph, installed or not.
        root = str(Path(twingraph.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen([sys.executable, "-m", "twingraph.stores.writer_child"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        try:
            reply = self._call(("open", results_recipe, metadata_recipe))
        except BaseException:
            self.kill()
            raise
        if reply[0] != "ready":
            self.kill()
            raise reply[1] if isinstance(reply[1], BaseException) else WriterGone(str(reply))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def peak_rss(self) -> int | None:
        """The child's peak resident memory in bytes so far (Linux; None elsewhere). Read
        from /proc, not ``getrusage``: a child started by vfork is charged its parent's
        memory of that moment there."""
        try:
            with open(f"/proc/{self._proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def send(self, records: list[Any], results: list[tuple[str, Any, Any]]) -> None:
        """Hand one batch to the child (blocks while it still reads the one before).
        Raises ``WriterGone``."""
        self._put(("write", pack(records, results)))

    def receive(self) -> tuple[Any, ...]:
        """The answer to the oldest batch sent: ``("ok", stale task keys, result rowid span
        or None)`` or ``("error", exception)``. Raises ``WriterGone``."""
        return self._get()

    def _call(self, message: Any) -> Any:
        self._put(message)
        return self._get()

    def _put(self, message: Any) -> None:
        try:
            self._in.write(frame(message))
            self._in.flush()
        except (OSError, ValueError) as exc:      # broken pipe, or closed already
            raise WriterGone(f"the writer process is gone: {exc}") from exc

    def _get(self) -> Any:
        try:
            reply = read_frame(self._out.read)
        except (OSError, ValueError) as exc:
            raise WriterGone(f"the writer process is gone: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - an answer that does not unpickle here
            return ("error", StorageError(f"the writer process failed: {exc}"))
        if reply is None:
            raise WriterGone(f"the writer process ended (exit code {self._proc.poll()})")
        return reply

    def close(self, timeout: float = 10.0) -> None:
        """Let the child finish and exit (killed if it takes longer than ``timeout``)."""
        try:
            self._in.write(frame(("close",)))
            self._in.close()
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._out.close()

    def kill(self) -> None:
        self._proc.kill()
        self._proc.wait()
        for f in (self._in, self._out):
            try:
                f.close()
            except (OSError, ValueError):
                pass
