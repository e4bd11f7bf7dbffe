"""The writer process: applies the recorder's batches for the process that started it.

``python -m twingraph.stores.writer_child`` is started by ``engine.writer.WriterProcess``
(decision 0012). It reads frames (``core.wire``) from stdin and answers each on what was
stdout (anything printed goes to stderr instead):

- ``("open", results_recipe, metadata_recipe, wire version)`` -> ``("ready", wire version)``:
  opens the same stores as its parent (a recipe is a store's ``reopen_recipe()``, or None for
  no such store). A parent of another wire version (``core.wire.VERSION``; the package on disk
  was upgraded after the parent loaded it) gets ``("error", ...)`` and keeps its writes;
- ``("write", packed, batch)`` -> ``("ok", stale, rows)``: the results (``put_many``, one
  transaction), then the records (``MetadataStore.write``, one transaction), exactly as the
  recorder does in-process. Unpacked by ``core.wire.unpack_rows``: task rows go to the
  metadata store as ``TaskRows`` and results to ``put_wire_rows`` as wire rows, the same
  rows without an object per row (decision 0075). ``stale`` as ``write`` returns it,
  ``rows`` the results' rowid span for the parent's key index. A failure answers
  ``("error", exception)``; the later frames of the same ``batch`` (a large batch comes as
  several, its results first) answer ``("skipped",)`` unwritten, so no task is recorded whose
  result failed;
- ``("close",)``, or the end of stdin (the parent went away), ends it after the batch in hand.

SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and the parent decides
when its writer stops (it flushes first).
"""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from twingraph.core.wire import VERSION, frame, read_frame, unpack_rows
from twingraph.errors import ConfigurationError, StorageError
from twingraph.stores import sqlite_rows

#: The result store's page cache here (bytes).
CHILD_CACHE_BYTES = 32 * 1024 * 1024
#: Young-generation threshold of the collector here. A frame's records live until it is
#: written, then die by reference counting: at Python's 700 the collector walked every frame's
#: objects several times (14 % of this process's time at 1M DAG nodes) and found nothing.
GC_THRESHOLD = 100_000


def open_store(recipe: Any) -> Any:
    """A store from its ``reopen_recipe()``: only the two kinds that have one."""
    if recipe is None:
        return None
    kind, args = recipe
    if kind == "sqlite":
        from twingraph.stores.results.sqlite import SQLiteStorage
        # It never looks keys up. It writes large runs: content-addressed keys land on a
        # different index page each, so a frame dirties up to a page per result. A page cache
        # that holds a frame's pages (SQLite's default of 2 MB does not) keeps them from being
        # spilled to the WAL before the commit.
        cache = max(args.get("cache_size") or 0, CHILD_CACHE_BYTES)
        return SQLiteStorage(**{**args, "cache_size": cache}, key_index=False)
    if kind == "sql":
        from twingraph.stores.metadata.store import SQLMetadataStore
        return SQLMetadataStore(args)
    raise ConfigurationError(f"the writer process cannot open a store of kind {kind!r}")


def serve(read: Any, out: BinaryIO) -> None:
    def answer(message: Any) -> None:
        try:
            data = frame(message)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            data = frame(("error", StorageError(f"{type(exc).__name__} in the writer process: "
                                                f"{message!r:.500}")))
        out.write(data)
        out.flush()

    first = read_frame(read)
    if first is None:
        return
    if first[3:4] != (VERSION,):       # a parent that loaded another TwinGraph than this one
        answer(("error", ConfigurationError(
            f"the writer process speaks wire version {VERSION}, its parent "
            f"{first[3] if len(first) > 3 else 1}: it keeps writing in its own process")))
        return
    try:
        results, metadata = open_store(first[1]), open_store(first[2])
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which keeps writing itself
        answer(("error", exc))
        return
    answer(("ready", VERSION))
    failed = None                  # the batch whose frame failed last: its later ones are skipped
    try:
        while True:
            message = read_frame(read)
            if message is None or message[0] == "close":
                return
            batch = message[2]
            if batch == failed:
                answer(("skipped",))
                continue
            try:
                records, items = unpack_rows(message[1])
                rows = results.put_wire_rows(items) if items and results is not None else None
                stale = metadata.write(records) if records and metadata is not None else []
                answer(("ok", stale, rows))
            except Exception as exc:  # noqa: BLE001 - the parent raises it from flush()
                failed = batch
                answer(("error", exc))
    finally:
        for store in (results, metadata):
            if store is not None:
                store.close()


def bind_as_they_are() -> None:
    """Register ``sqlite3`` adapters that return ``None`` and ``bytes`` as they are, in this
    process only (it runs nothing but its two stores; never call this in a process that runs
    other code).

    ``sqlite3`` adapts every parameter that is not an exact int, float, str or bytearray.
    With no adapter registered for its type, the lookup raises and clears an AttributeError
    with a formatted message: ~0.5 µs for each ``None`` and ``bytes`` bound, and a result row
    binds two of them (compression, the value), a task row one or more. A registered adapter
    costs a dict lookup and a C call instead. What is bound does not change: None is NULL,
    bytes a BLOB (``bytes.__bytes__`` returns the object itself, ``{}.get`` returns None)."""
    null: Callable[[None], None] = cast(Callable[[None], None], {}.get)
    sqlite3.register_adapter(type(None), null)
    sqlite3.register_adapter(bytes, bytes.__bytes__)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    bind_as_they_are()
    sqlite_rows.ROWS_PER_STATEMENT = sqlite_rows.CHILD_ROWS_PER_STATEMENT    # before any store
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())     # stray prints: not into the frames
    try:
        serve(sys.stdin.buffer.read, out)
    except BrokenPipeError:          # the parent went away while it was being answered
        os._exit(0)


if __name__ == "__main__":
    main()
