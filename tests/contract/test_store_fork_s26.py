"""A SQLite (or hybrid) result store used in a child forked while a thread of the parent wrote
to it (session 26 review): the child inherited the writer lock held (every write waited for
ever) and SQLite's own record of the write's file locks (writes waited for the busy
timeout), and closing the parent's connections as the child dropped their threads could hang
at the fork itself. Now a child forked between writes uses the store normally, and one
forked mid-write is refused at once, saying why. Real ``os.fork`` over real files."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from twingraph.core.results import DataType, StorageMetadata
from twingraph.errors import StorageError
from twingraph.stores.results.hybrid import HybridStorage
from twingraph.stores.results.sqlite import SQLiteStorage


def _meta(key: str, data: bytes) -> StorageMetadata:
    return StorageMetadata(key, DataType.BINARY, "", len(data))


def _in_child(store, key: str) -> tuple[int, str]:
    """Fork; the child puts and reads back ``key``. (exit status, what it said), waiting at
    most 20 s (a child still running then is killed and reported as hung)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child
        os.close(read)
        code, said = 0, "ok"
        try:
            store.put(key, b"child", _meta(key, b"child"))
            assert bytes(store.get(key)) == b"child"
        except StorageError as exc:
            code, said = 3, str(exc)
        except BaseException as exc:  # noqa: BLE001
            code, said = 4, repr(exc)
        os.write(write, said.encode()[:4000])
        os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(read)
            return -1, "hung"
        time.sleep(0.01)
    said = os.read(read, 4096).decode()
    os.close(read)
    return os.waitstatus_to_exitcode(status), said


@pytest.fixture(params=["sqlite", "hybrid"])
def store(request, tmp_path: Path):
    s = SQLiteStorage(tmp_path / "r.db") if request.param == "sqlite" \
        else HybridStorage(str(tmp_path / "h"), large_threshold=1_000_000)
    yield s
    s.close()


def test_a_child_forked_mid_write_is_refused_at_once(store) -> None:
    store.put("before", b"x", _meta("before", b"x"))
    inside, leave = threading.Event(), threading.Event()
    sqlite_store = store if isinstance(store, SQLiteStorage) else store.small

    def writer() -> None:                      # a write that stays open until told
        with sqlite_store._write("put", "held") as conn:
            conn.execute("SELECT 1")
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(10)
    try:
        code, said = _in_child(store, "child-key")
    finally:
        leave.set()
        t.join(10)
    assert code == 3, said
    assert "forked while another thread" in said and "spawn" in said
    assert bytes(store.get("before")) == b"x"             # the parent goes on
    store.put("after", b"y", _meta("after", b"y"))


def test_a_child_forked_between_writes_uses_the_store(store) -> None:
    """Threads of the parent had connections (a thread that ended and one that lives on): the
    child makes its own and leaves theirs alone."""
    def touch() -> None:
        store.put("t", b"t", _meta("t", b"t"))
    t = threading.Thread(target=touch)
    t.start()
    t.join()
    store.put("main", b"m", _meta("main", b"m"))
    for n in range(3):
        code, said = _in_child(store, f"c{n}")
        assert code == 0, said
        assert bytes(store.get(f"c{n}")) == b"child"    # the child's write reached the file


def test_small_async_writes_wait_off_the_event_loop_while_a_write_holds_the_store(store) -> None:
    """A small ``store_result`` or ``update_metadata`` is made on the loop itself; while
    another write held the store (a 640 MB put) it waited there, and every task on the loop
    with it (3.8 s in the review). Now it waits in a thread when the store is busy."""
    import asyncio
    store.put("small", b"x", _meta("small", b"x"))
    hold = store._write("put", "held") if isinstance(store, SQLiteStorage) else store._writing()
    ticks: list[float] = []

    async def main() -> None:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.01)
                ticks.append(time.monotonic())
        t = asyncio.create_task(ticker())
        with hold:
            calls = asyncio.gather(
                store.update_metadata("small", {"owner": "me"}),
                store.store_result("s2", b"y", _meta("s2", b"y")))
            await asyncio.sleep(0.3)                   # the loop runs while they wait
            assert not calls.done()
            during = len(ticks)
        assert await asyncio.wait_for(calls, 30) == [True, True]
        t.cancel()
        assert during >= 10, during
    asyncio.run(main())
    assert store.head("small").metadata["owner"] == "me" and bytes(store.get("s2")) == b"y"
