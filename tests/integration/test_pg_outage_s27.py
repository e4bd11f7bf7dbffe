"""A PostgreSQL outage of a second or two (a server restart) failed the run: the recorder
gave a batch up after three tries 0.1 s apart, and the run learnt of it only at its end,
every task having run (session 27 review). A store that cannot be reached is now written
again for up to a minute. The machine's real PostgreSQL, behind a small TCP proxy that this
test takes down and brings back."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

pytestmark = pytest.mark.postgres


class Proxy:
    """TCP proxy to 127.0.0.1:5432; ``down()`` drops every connection and refuses new ones."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
            ls, self._listener = self._listener, None
        for s in [ls, *socks]:
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", 5432))
            with self._lock:
                self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


@component(cache=False)
def slow_s27(i: int) -> int:
    time.sleep(0.01)
    return i


@pipeline(name="through_an_outage_s27", max_parallel=4)
def through(n: int):
    return sum(slow_s27(i=i)["outputs"]["result"] for i in range(n))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_run_goes_on_through_a_short_postgresql_outage(postgres_url, tmp_path,
                                                         writer: str) -> None:
    """With the writer process too (session 28): it answered the batch with the outage's
    error, and the recorder gave that batch up at once, failing the run."""
    proxy = Proxy()
    host = postgres_url.split("@", 1)[1].split("/", 1)[0]
    url = postgres_url.replace(host, f"127.0.0.1:{proxy.port}", 1)
    metadata = SQLMetadataStore(url, create=True)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")), metadata=metadata,
                 flush_interval=0.02, writer=writer)
    deadline = time.monotonic() + 30
    while eng.recorder.writer != writer and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.recorder.writer == writer

    def outage() -> None:
        time.sleep(0.6)
        proxy.down()
        time.sleep(2.0)
        proxy.up()

    try:
        cut = threading.Thread(target=outage)
        cut.start()
        r = through.run(engine=eng, n=400)
        cut.join()
        assert (r.state, r.value) == (RunState.SUCCESS, sum(range(400))), r.error
        tasks = metadata.get_tasks(r.run_id)
        assert len(tasks) == 400 and {t.state.value for t in tasks} == {"SUCCESS"}
        assert metadata.get_run(r.run_id).state is RunState.SUCCESS
    finally:
        eng.close()
        proxy.down()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_run_gives_up_when_postgresql_stays_away(postgres_url, tmp_path, monkeypatch,
                                                   writer: str) -> None:
    """Session 28 regression review: the writer process's batch was written again every
    0.1 s for as long as the outage lasted (its tries started from 0 each turn): the run went
    on, unrecorded, for ever. Now both writers give it up after ``UNAVAILABLE_WAIT``."""
    from twingraph.engine import recorder
    monkeypatch.setattr(recorder, "UNAVAILABLE_WAIT", 2.0)
    proxy = Proxy()
    host = postgres_url.split("@", 1)[1].split("/", 1)[0]
    url = postgres_url.replace(host, f"127.0.0.1:{proxy.port}", 1)
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(url, create=True), flush_interval=0.02,
                 writer=writer)
    deadline = time.monotonic() + 30
    while eng.recorder.writer != writer and time.monotonic() < deadline:
        time.sleep(0.01)
    cut_at: list[float] = []

    def outage() -> None:
        time.sleep(0.6)
        proxy.down()
        cut_at.append(time.monotonic())

    try:
        threading.Thread(target=outage, daemon=True).start()
        r = through.run(engine=eng, n=3000)             # ~30 s of work at four at a time
        assert r.state is RunState.FAILED
        assert "unreachable" in str(r.error)
        assert time.monotonic() - cut_at[0] < 20, time.monotonic() - cut_at[0]
    finally:
        proxy.up()
        eng.close()
        proxy.down()
