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
import queue
import subprocess
import sys
import threading
from typing import Any

from twingraph.core.wire import VERSION as WIRE_VERSION, frame, pack, read_frame
from twingraph.errors import StorageError

#: Results larger than this (bytes) are written in this process, with their whole batch.
INLINE_MAX = 256 * 1024
#: Records and results per frame: a larger batch goes as several (the child holds one at a
#: time). Each frame is a transaction there: content-addressed result keys land at random
#: places in the index, so a transaction writes about one index page per result until it is
#: large enough for rows to share pages. At 1M DAG nodes 8,192 ran faster than 4,096 for
#: 10 MB more in the child (124 MB at its peak; decision 0012).
FRAME_MAX = 8192


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


#: The child's command: ``-P`` keeps the working directory off ``sys.path``; this twingraph's
#: location goes first only if the default path would find another one (or none).
_BOOT = ("import importlib.util, os, sys\n"
         "root = sys.argv[1]\n"
         "spec = importlib.util.find_spec('twingraph')\n"
         "if spec is None or os.path.dirname(os.path.dirname(os.path.realpath(spec.origin)))"
         " != root:\n"
         "    sys.path.insert(0, root)\n"
         "from twingraph.stores.writer_child import main\n"
         "main()\n")
_GONE = ("gone",)


class WriterProcess:
    """One child process. ``encode``/``send_frame``/``receive`` from one thread at a time (the
    recorder's); a reader thread takes the child's answers off the pipe as they come, so the
    child never waits to answer while this process waits to send."""

    def __init__(self, results_recipe: Any, metadata_recipe: Any) -> None:
        import twingraph
        root = os.path.dirname(os.path.dirname(os.path.realpath(twingraph.__file__)))
        self._proc = subprocess.Popen([sys.executable, "-P", "-c", _BOOT, root],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        self._replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        try:
            self.send_frame(frame(("open", results_recipe, metadata_recipe, WIRE_VERSION)))
            reply = self._read()
        except BaseException:
            self.kill()
            raise
        if reply is _GONE or reply[0] != "ready":
            self.kill()
            if reply is not _GONE and isinstance(reply[1], BaseException):
                raise reply[1]
            raise WriterGone(f"the writer process did not start (exit code {self._proc.poll()})")
        if reply[1:2] != (WIRE_VERSION,):    # another TwinGraph on disk (upgraded in place)
            self.kill()
            raise WriterGone(f"the writer process speaks wire version "
                             f"{reply[1] if len(reply) > 1 else 1}, this process {WIRE_VERSION}")
        threading.Thread(target=self._take_replies, name="twingraph-writer-replies",
                         daemon=True).start()

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

    @staticmethod
    def encode(records: list[Any], results: list[Any], batch: int) -> bytes:
        """Records and results of ``batch`` as a frame (the child skips a batch's frames after
        one of them failed); raises what packing or pickling raises."""
        return frame(("write", pack(records, results), batch))

    def send_frame(self, data: bytes) -> None:
        """Hand one frame to the child (blocks while it still reads the one before).
        Raises ``WriterGone``."""
        try:
            self._in.write(data)
            self._in.flush()
        except (OSError, ValueError) as exc:      # broken pipe, or closed already
            raise WriterGone(f"the writer process is gone: {exc}") from exc

    def receive(self) -> tuple[Any, ...]:
        """The answer to the oldest frame sent: ``("ok", stale task keys, result rowid span
        or None)``, ``("error", exception)`` or ``("skipped",)`` (an earlier frame of its batch
        failed). Raises ``WriterGone``."""
        reply = self._replies.get()
        if reply is _GONE:
            self._replies.put(_GONE)              # and for every later call
            raise WriterGone(f"the writer process ended (exit code {self._proc.poll()})")
        return reply  # type: ignore[no-any-return]

    def _read(self) -> Any:
        try:
            reply = read_frame(self._out.read)
        except (OSError, ValueError):
            return _GONE
        except Exception as exc:  # noqa: BLE001 - an answer that does not unpickle here
            return ("error", StorageError(f"the writer process failed: {exc}"))
        return _GONE if reply is None else reply

    def _take_replies(self) -> None:
        while True:
            reply = self._read()
            self._replies.put(reply)
            if reply is _GONE:
                return

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
