"""The recorder's batches written by a child process (decision 0012): same rows as the thread,
failures surface the same way, a dead child loses nothing, and it ends with its parent.

Everything here is real: the child process, SQLite files, the machine's PostgreSQL, signals
to stop and kill the child. ``monkeypatch`` shrinks size constants (frame size, the offload
threshold) so that small batches take the paths large ones take, and in one test replaces the
child's boot code by a real process that answers as an older TwinGraph would (no version). One
test runs the run loop's hand-over step for small results on a plain namespace that holds only
the three lists it reads, to check both of its outcomes without timing a child's death."""
import os
import signal
import time
from dataclasses import astuple

import pytest

from twingraph.core.records import LogRecord, RunRecord, TaskRecord, TaskUpdate
from twingraph.core.states import RunState, TaskState
from twingraph.core.wire import KINDS, frame, pack, read_frame, unpack
from twingraph.core.results import DataType, StorageMetadata
from twingraph.engine import engine as engine_module
from twingraph.engine import recorder as recorder_module
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, register_operation)
from twingraph.engine.engine import Engine
from twingraph.engine.recorder import Recorder
from twingraph.errors import ConfigurationError, NotFoundError
from twingraph.stores.metadata import MemoryMetadataStore, SQLMetadataStore
from twingraph.stores.results.memory import MemoryStorage
from twingraph.stores.results.sqlite import SQLiteStorage


def _stores(root, url=None):
    return (SQLiteStorage(str(root / "results.db")),
            SQLMetadataStore(url or f"sqlite:///{root / 'meta.db'}", create=True))


def _engine(root, writer, url=None):
    results, metadata = _stores(root, url)
    return Engine(results=results, metadata=metadata, writer=writer)


def _ready(recorder, timeout=30.0):
    deadline = time.monotonic() + timeout
    while recorder.writer != "process":
        assert time.monotonic() < deadline, "the writer process did not start"
        time.sleep(0.02)


def _ops():
    register_operation("wp_inc", lambda deps, p: p["i"] + sum(deps.values()))
    # a result larger than INLINE_MAX: its batch is written in this process
    register_operation("wp_big", lambda deps, p: b"x" * (300 * 1024))
    register_operation("wp_slow", lambda deps, p: time.sleep(0.002) or p["i"])


def _dag(dag_id, n, op="wp_inc", big_every=0):
    """Node i reads i-1 and i//2; with ``big_every``, a large-result node every so many."""
    nodes = []
    for i in range(n):
        args = [f"n{i - 1}", f"n{i // 2}"] if i > 1 else (["n0"] if i == 1 else [])
        nodes.append(NodeDefinition(f"n{i}", op, list(dict.fromkeys(args)), {"i": i}))
        if big_every and i % big_every == big_every - 1:
            nodes.append(NodeDefinition(f"big{i}", "wp_big", [], {"i": i}))
    return DAGDefinition(dag_id, nodes)


def _expected(n):
    v = []
    for i in range(n):
        v.append(i + (v[i - 1] + (v[i // 2] if i // 2 != i - 1 else 0) if i > 1 else
                      (v[0] if i == 1 else 0)))
    return v


def _rows(eng, run_id):
    return {t.node_id: (t.state, t.cache_key, t.content_hash, t.cache_status, t.inputs)
            for t in eng.metadata.get_tasks(run_id)}


@pytest.fixture
def small_frames(monkeypatch):
    monkeypatch.setattr(recorder_module, "FRAME_MAX", 64)    # batches go as several frames


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_run_written_by_the_writer_process_has_the_rows_a_thread_writes(
        tmp_path, small_frames, backend, request):
    _ops()
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    by_writer = {}
    expected = _expected(600)
    for writer in ("process", "thread"):
        eng = _engine(tmp_path / writer[0], writer, url)
        try:
            if writer == "process":
                _ready(eng.recorder)
            sched = DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=4),
                                     engine=eng)
            first = sched.run(_dag("wp", 600, big_every=97))
            assert first.state is RunState.SUCCESS, first.error
            again = sched.run(_dag("wp", 600, big_every=97))
            assert eng.recorder.writer == writer
            rows = _rows(eng, first.run_id)
            assert len(rows) == 606 and all(r[0] is TaskState.SUCCESS for r in rows.values())
            assert {r[3] for r in _rows(eng, again.run_id).values()} == {"hit"}
            assert [eng.load_value(rows[f"n{i}"][1]) for i in range(600)] == expected
            assert eng.load_value(rows["big96"][1]) == b"x" * (300 * 1024)
            # the results' metadata too: small ones cross as wire rows built by the loop
            heads = {n: eng.results.head(r[1]) for n, r in rows.items()}
            assert heads["n5"].metadata == {"encoding": "json", "dag_id": "wp"}
            by_writer[writer] = rows, {n: (h.data_type, h.content_hash, h.size, h.metadata)
                                       for n, h in heads.items()}
        finally:
            eng.close()
    assert by_writer["process"] == by_writer["thread"]


def test_small_results_built_as_wire_rows_are_handed_over_either_way(monkeypatch):
    """A run loop builds a small result as its wire row while a writer process takes them;
    at hand-over they go packed in pieces of at most FRAME_MAX with their tokens, or, if the
    recorder writes in this process again, as the ``PutResult``s it would have made."""
    from types import SimpleNamespace

    from twingraph.core.wire import PackedResults
    from twingraph.engine import loop as loop_module
    from twingraph.engine.recorder import PutResult
    monkeypatch.setattr(loop_module, "FRAME_MAX", 2)
    meta = {"encoding": "json", "dag_id": "p"}
    rows = [(f"k{i}", str(i).encode(), (f"k{i}", DataType.PRIMITIVE, f"h{i}", 1, None, None,
                                        meta)) for i in range(3)]
    for packing in (True, False):
        loop = SimpleNamespace(small=list(rows), small_tokens=["t0", "t1", "t2"], out=["rec"])
        loop_module.RunLoop._small_results(loop, packing)
        assert loop.small == [] and loop.small_tokens == [] and loop.out[0] == "rec"
        expected = [(k, (d,), StorageMetadata(*m)) for k, d, m in rows]
        if packing:
            assert [type(x) for x in loop.out[1:]] == [PackedResults, PackedResults]
            assert [x.count for x in loop.out[1:]] == [2, 1]
            assert [t for x in loop.out[1:] for t in x.tokens] == ["t0", "t1", "t2"]
            assert [i for x in loop.out[1:] for i in x.items()] == expected
        else:
            assert all(type(x) is PutResult for x in loop.out[1:])
            assert [(p.key, p.buffers, p.meta) for p in loop.out[1:]] == expected
            assert [p.token for p in loop.out[1:]] == ["t0", "t1", "t2"]


def test_a_killed_writer_process_loses_nothing(tmp_path):
    _ops()
    eng = _engine(tmp_path, "process")
    try:
        _ready(eng.recorder)
        pid = eng.recorder._child.pid
        sched = DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=4), engine=eng)

        def kill_soon(run):
            time.sleep(0.3)
            os.kill(pid, signal.SIGKILL)

        import threading
        killer = threading.Thread(target=kill_soon, args=(None,))
        killer.start()
        r = sched.run(_dag("killed", 400, op="wp_slow"))
        killer.join()
        assert r.state is RunState.SUCCESS, r.error
        assert eng.recorder.writer == "thread"
        rows = _rows(eng, r.run_id)
        assert len(rows) == 400 and all(v[0] is TaskState.SUCCESS for v in rows.values())
        assert all(eng.results.content_hashes([v[1]]) for v in rows.values())
    finally:
        eng.close()


def test_a_store_error_in_the_writer_process_is_raised_by_flush(tmp_path):
    results, metadata = _stores(tmp_path)
    rec = Recorder(results, metadata)
    try:
        rec.offload()
        _ready(rec)
        rec.add(TaskUpdate("no-such-run", "n0", TaskState.RUNNING, 1.0))
        with pytest.raises(NotFoundError, match="unknown task"):
            rec.flush()
        # ... and the writer goes on with the next batch
        rec.add(RunRecord("r1", "p", RunState.RUNNING, created_at=1.0))
        rec.flush()
        assert rec.writer == "process"
        assert metadata.get_run("r1").state is RunState.RUNNING
    finally:
        rec.close()
        results.close()
        metadata.close()


@pytest.fixture
def auto_engine(tmp_path, monkeypatch):
    """An 'auto' engine that offloads after 50 tasks, and a scheduler on it."""
    monkeypatch.setattr(engine_module, "OFFLOAD_AFTER", 50)
    _ops()
    eng = _engine(tmp_path, "auto")
    try:
        yield eng, DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=4),
                                    engine=eng)
    finally:
        eng.close()


def test_auto_moves_the_writes_of_a_large_run_to_a_process(auto_engine):
    eng, sched = auto_engine
    assert eng.recorder.writer == "thread"
    r = sched.run(_dag("auto", 1500, op="wp_slow"))
    assert r.state is RunState.SUCCESS, r.error
    assert eng.recorder.writer == "process"
    assert len(_rows(eng, r.run_id)) == 1500


def test_auto_counts_the_tasks_of_all_runs_of_an_engine(auto_engine):
    """A long-lived engine (a server, a scheduler) running many small runs offloads too."""
    eng, sched = auto_engine
    first = sched.run(_dag("small1", 30))
    assert first.state is RunState.SUCCESS, first.error
    eng.recorder.flush()
    assert eng.recorder.writer == "thread" and eng.tasks_taken == 30
    second = sched.run(_dag("small2", 30, op="wp_slow"))
    assert second.state is RunState.SUCCESS, second.error
    _ready(eng.recorder)
    third = sched.run(_dag("small3", 30, op="wp_slow"))
    assert third.state is RunState.SUCCESS, third.error
    assert eng.recorder.writer == "process"
    assert [len(_rows(eng, r.run_id)) for r in (first, second, third)] == [30, 30, 30]


def test_stores_another_process_cannot_open_keep_the_thread(tmp_path):
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(), writer="process")
    try:
        time.sleep(0.2)
        assert eng.recorder.writer == "thread" and eng.recorder._offload == "unavailable"
    finally:
        eng.close()
    results = SQLiteStorage(str(tmp_path / "r.db"))
    mem = SQLMetadataStore("sqlite://", create=True)       # in memory: not reopenable
    eng = Engine(results=results, metadata=mem, writer="process")
    try:
        assert eng.recorder._offload == "unavailable"
    finally:
        eng.close()
    with pytest.raises(ConfigurationError, match="writer must be one of"):
        Engine(results=MemoryStorage(), writer="elsewhere")


def test_records_and_results_cross_the_pipe_unchanged():
    recs = [RunRecord("r", "p", RunState.RUNNING, params={"a": [1, 2.5]}, created_at=3.0),
            TaskRecord("r", "n", "c", TaskState.SUCCESS, "local", "k", "miss", "why", "k", "h",
                       1, 2, 3, {"deps": [["m", []]]}, 1.0, 2.0, 3.0, None),
            TaskUpdate("r", "n", TaskState.FAILED, 4.0, error="boom"),
            LogRecord("r", 5.0, "info", "hello", "n"),
            TaskUpdate("r", "n", TaskState.SUCCESS, 6.0),          # kinds interleaved: order kept
            LogRecord("r", 7.0, "info", "again", "n")]
    meta = StorageMetadata("k", DataType.PRIMITIVE, "h", 3, metadata={"encoding": "json"})
    packed = pack(recs, [("k", (b"1", memoryview(b"23")), meta)])
    buf = bytearray(frame(packed))
    got_recs, got_res = unpack(read_frame(_reader(bytes(buf))))
    assert got_recs == recs
    assert got_res == [("k", (b"123",), meta)]
    assert len(KINDS) == len(set(KINDS)) == 8
    task_runs = [rows for kind, rows in packed[0] if KINDS[kind] is TaskRecord]
    assert task_runs and all(type(rows) is bytes for rows in task_runs)     # as JSON
    # A task row orjson refuses (an int beyond 64 bits) goes pickled, unchanged.
    odd = [TaskRecord("r", "big", "c", TaskState.SUCCESS, inputs={"deps": [["m", [2 ** 70]]]})]
    packed = pack(odd, [])
    assert type(packed[0][0][1]) is list
    assert unpack(read_frame(_reader(frame(packed))))[0] == odd
    assert read_frame(_reader(bytes(buf[:-1]))) is None       # cut inside a frame
    assert read_frame(_reader(b"")) is None


def _reader(data):
    pos = [0]

    def read(n):
        chunk = data[pos[0]:pos[0] + min(n, 7)]                  # short reads, as pipes give
        pos[0] += len(chunk)
        return chunk
    return read


def _put(key, data=b"12", **md):
    import hashlib

    from twingraph.engine.recorder import PutResult
    return PutResult(key, (data,), StorageMetadata(key, DataType.PRIMITIVE,
                                                   hashlib.sha256(data).hexdigest(), len(data),
                                                   metadata=md or {"encoding": "json"}))


@pytest.fixture
def offloaded(tmp_path):
    results, metadata = _stores(tmp_path)
    rec = Recorder(results, metadata)
    rec.offload()
    _ready(rec)
    yield rec, results, metadata
    rec.close()
    results.close()
    metadata.close()


def test_a_lookup_here_finds_what_the_child_just_stored(offloaded):
    """Keys are noted in this process's key index before the child commits them: found at
    once, not only when the index next reads the file (which it does not do here)."""
    rec, results, _ = offloaded
    assert results.content_hashes(["k-first"]) == {}          # a miss builds the index
    deadline = time.monotonic() + 10
    while not results._keys.ready:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    results._keys.sync_every = 3600.0                        # no reading the file back
    results._keys._last_sync = time.monotonic()
    rec.add_many([_put(f"k{i}") for i in range(50)])
    rec.flush()
    assert all(results.content_hashes([f"k{i}"]) for i in range(50))   # one by one: filtered


def test_what_does_not_pickle_is_written_in_this_process(offloaded):
    rec, _, metadata = offloaded

    class Local(str):          # a str the metadata store takes, pickle cannot find by name
        pass
    rec.add(RunRecord("r-local", "p", RunState.RUNNING, params={"a": Local("x")}, created_at=1.0))
    rec.flush()
    assert metadata.get_run("r-local").params == {"a": "x"}
    assert rec.writer == "process"


def test_long_answers_do_not_stall_the_pipe(offloaded):
    """Thousands of stale updates make an answer far larger than a pipe's buffer while the
    next batch is being sent: both sides keep going."""
    rec, _, metadata = offloaded
    names = [f"node-{i:05d}-" + "x" * 40 for i in range(5000)]
    metadata.write([RunRecord("r", "p", RunState.RUNNING, created_at=1.0)] +
                   [TaskRecord("r", n, "c", fence=5) for n in names])
    stale = []
    rec.on_stale = stale.extend
    rec.add_many([TaskUpdate("r", n, TaskState.RUNNING, 2.0, fence=1) for n in names])
    rec.flush()
    rec.add_many([LogRecord("r", 3.0, "info", "after")])
    rec.flush()
    assert len(stale) == 5000


def test_a_split_batch_records_nothing_when_its_results_fail(offloaded, monkeypatch):
    monkeypatch.setattr(recorder_module, "FRAME_MAX", 4)
    rec, results, metadata = offloaded
    bad = _put("k5", bad={1, 2})                                 # metadata that is not JSON
    rec.add_many([RunRecord("r", "p", RunState.RUNNING, created_at=1.0)] +
                 [TaskRecord("r", f"n{i}", "c", TaskState.SUCCESS, result_key=f"k{i}")
                  for i in range(6)] + [_put(f"k{i}") for i in range(5)] + [bad])
    with pytest.raises(Exception, match="not JSON-serializable"):
        rec.flush()
    assert metadata.get_run("r") is None and not results.has("k5")   # no task row at all
    with pytest.raises(Exception, match="not JSON-serializable"):
        rec.flush("r")           # its records were in the batch's later frames: it is told too
    rec.add(RunRecord("r2", "p", RunState.RUNNING, created_at=1.0))
    rec.flush()
    assert metadata.get_run("r2") is not None and rec.writer == "process"


def test_relative_store_paths_mean_the_same_files_in_the_child(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    results = SQLiteStorage("r.db")
    metadata = SQLMetadataStore("sqlite:///m.db", create=True)
    monkeypatch.chdir(tmp_path / "b")                           # user code moves elsewhere
    rec = Recorder(results, metadata)
    try:
        rec.offload()
        _ready(rec)
        rec.add_many([RunRecord("r", "p", RunState.RUNNING, created_at=1.0), _put("k1")])
        rec.flush()
        assert results.has("k1") and metadata.get_run("r") is not None
        assert list((tmp_path / "b").iterdir()) == []
    finally:
        rec.close()
        results.close()
        metadata.close()


def test_frames_left_unanswered_by_a_dead_child_keep_results_before_records(offloaded,
                                                                              monkeypatch):
    """The child stops with two frames of a split batch sent and unanswered, and dies: this
    process writes them itself, and once one of the batch's results frames fails there, its
    later frames (the records) are not written either."""
    monkeypatch.setattr(recorder_module, "FRAME_MAX", 2)
    rec, results, metadata = offloaded
    pid = rec._child.pid
    os.kill(pid, signal.SIGSTOP)                      # frames pile up unanswered
    try:
        rec.add_many([RunRecord("r", "p", RunState.RUNNING, created_at=1.0)] +
                     [TaskRecord("r", f"n{i}", "c", TaskState.SUCCESS, result_key=f"k{i}")
                      for i in range(4)] +
                     [_put("k0"), _put("k1"), _put("k2"), _put("k3", bad={1, 2})])
        outcome = []

        def flush():
            try:
                rec.flush()
                outcome.append(None)
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)
        import threading
        t = threading.Thread(target=flush)
        t.start()
        deadline = time.monotonic() + 10
        while len(rec._unacked) < 2:                  # both results frames sent, waiting
            assert time.monotonic() < deadline and not outcome
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(rec._unacked) == 2 and not outcome
    finally:
        os.kill(pid, signal.SIGKILL)
    t.join(30)
    assert outcome and "not JSON-serializable" in str(outcome[0])
    assert rec.writer == "thread"
    assert [results.has(f"k{i}") for i in range(4)] == [True, True, False, False]   # by frame
    assert metadata.get_run("r") is None              # no record of the failed batch
    with pytest.raises(Exception, match="not JSON-serializable"):
        rec.flush("r")          # its records were in the batch's later frames: it is told too


def test_the_writer_process_opens_the_result_store_for_bulk_writes(tmp_path):
    """The child's connection holds a frame's index pages (no spill to the WAL before the
    commit); this process's own connections keep the size they were given."""
    from twingraph.stores import writer_child

    mine = SQLiteStorage(str(tmp_path / "r.db"), cache_size=1024 * 1024)
    child = writer_child.open_store(mine.reopen_recipe())
    try:
        assert child._conn().execute("PRAGMA cache_size").fetchone()[0] == \
            -writer_child.CHILD_CACHE_BYTES // 1024
        assert mine._conn().execute("PRAGMA cache_size").fetchone()[0] == -1024
    finally:
        child.close()
        mine.close()


def test_ends_of_another_wire_version_refuse_each_other(tmp_path, monkeypatch):
    """After an upgrade in place, the child runs the package on disk, not the one its parent
    loaded: either end refuses the other's version, and the parent keeps writing itself."""
    import subprocess
    import sys

    from twingraph.engine import writer as writer_module

    results = SQLiteStorage(str(tmp_path / "r.db"))
    try:
        # an older parent: its "open" frame carries no version
        proc = subprocess.Popen([sys.executable, "-m", "twingraph.stores.writer_child"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(frame(("open", results.reopen_recipe(), None)))
        proc.stdin.flush()
        reply = read_frame(proc.stdout.read)
        assert reply[0] == "error" and "wire version" in str(reply[1])
        assert proc.wait(10) == 0
        # an older child: it answers "ready" without a version
        old_child = ("import sys, pickle, struct\n"
                     "sys.stdin.buffer.read(8)\n"
                     "data = pickle.dumps(('ready',), protocol=5)\n"
                     "sys.stdout.buffer.write(struct.pack('>Q', len(data)) + data)\n"
                     "sys.stdout.buffer.flush()\n"
                     "sys.stdin.buffer.read()\n")
        monkeypatch.setattr(writer_module, "_BOOT", old_child)
        with pytest.raises(writer_module.WriterGone, match="wire version"):
            writer_module.WriterProcess(results.reopen_recipe(), None)
        rec = Recorder(results, None)
        try:
            rec.offload()
            deadline = time.monotonic() + 10
            while rec._offload == "starting" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rec._offload == "failed" and rec.writer == "thread"
        finally:
            rec.close()
    finally:
        results.close()


def test_rows_and_results_packed_by_the_loop_cross_the_pipe_unchanged():
    """What a run loop packs at hand-over (``pack_task_values``, ``pack_results``) unpacks
    to the same records and ``put_many`` items, alone or beside results sent as tuples."""
    from twingraph.core.wire import PackedResults, pack_results, pack_task_values
    rows = [TaskRecord("r", f"n{i}", "c", TaskState.SUCCESS, "local", f"k{i}", "miss", "why",
                       f"k{i}", "h", 1, 1, i, {"deps": [[f"n{i - 1}", ["outputs", 0]]]},
                       1.0, 2.0, 3.0, None) for i in range(3)]
    packed_rows = pack_task_values([astuple(r) for r in rows])
    assert packed_rows is not None and packed_rows.count == 3
    assert packed_rows.records() == rows
    puts = [_put(f"k{i}", str(i).encode()) for i in range(3)]
    puts[1].token = "token-1"
    packed = pack_results(puts)
    assert isinstance(packed, PackedResults) and packed.keys == ["k0", "k1", "k2"]
    assert packed.tokens == ["token-1"] and packed.count == 3
    items = [(p.key, (p.buffers[0],), p.meta) for p in puts]
    assert packed.items() == items
    loose = _put("k9", b"9")
    wire = pack([rows[0], packed_rows], [("k9", loose.buffers, loose.meta), packed])
    got_recs, got_res = unpack(read_frame(_reader(frame(wire))))
    assert got_recs == [rows[0], *rows]
    assert got_res == [("k9", (b"9",), loose.meta), *items]
    # orjson refuses an int beyond 64 bits: such rows are not packed (sent as tuples later)
    assert pack_task_values([astuple(TaskRecord("r", "x", "c", inputs={"n": 2 ** 70}))]) is None


def test_frames_count_the_items_a_packed_one_holds():
    from twingraph.core.wire import PackedTaskRecords
    big, small = PackedTaskRecords(b"[]", 5), PackedTaskRecords(b"[]", 2)
    items = ["a", "b", big, "c", small, "d"]
    assert recorder_module._size(items) == 11
    assert [list(f) for f in recorder_module._frames(items, 4)] == \
        [["a", "b"], [big], ["c", small, "d"]]
    assert list(recorder_module._frames([], 4)) == []


def test_packed_frames_left_unanswered_by_a_dead_child_are_written_here(offloaded,
                                                                        monkeypatch):
    """Task rows and results packed by a run loop, sent and left unanswered by a child that
    then dies, are unpacked and written by this process: nothing is lost."""
    from twingraph.core.wire import pack_results, pack_task_values
    monkeypatch.setattr(recorder_module, "FRAME_MAX", 3)
    rec, results, metadata = offloaded
    assert rec.packs_records
    rows = [TaskRecord("r", f"n{i}", "c", TaskState.SUCCESS, result_key=f"k{i}", attempts=1)
            for i in range(4)]
    puts = [_put(f"k{i}", str(i).encode()) for i in range(4)]
    pid = rec._child.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        rec.add_many([RunRecord("r", "p", RunState.RUNNING, created_at=1.0),
                      pack_task_values([astuple(r) for r in rows]), pack_results(puts[:2]), puts[2],
                      pack_results(puts[3:])])
        import threading
        done = []
        t = threading.Thread(target=lambda: done.append(rec.flush()))
        t.start()
        deadline = time.monotonic() + 10
        while len(rec._unacked) < 2:
            assert time.monotonic() < deadline and not done
            time.sleep(0.01)
    finally:
        os.kill(pid, signal.SIGKILL)
    t.join(30)
    assert done == [None] and rec.writer == "thread" and not rec.packs_records
    assert all(results.has(f"k{i}") for i in range(4))
    assert results.get("k3") == b"3"
    assert {t.node_id: t.result_key for t in metadata.get_tasks("r")} == \
        {f"n{i}": f"k{i}" for i in range(4)}


def _big_keys():
    return {2 ** 70: 7}


def _plus_one(v):
    return v + 1


def test_task_rows_orjson_refuses_are_still_written_by_the_writer_process(tmp_path):
    """A task whose lineage path holds an int beyond 64 bits: the loop cannot pack its row
    as JSON and hands it over as a record; the child writes it like any other."""
    from twingraph import component, pipeline
    big_keys = component(_big_keys, name="wp_big_keys")
    plus_one = component(_plus_one, name="wp_plus_one")

    @pipeline(name="wp_bigpath")
    def bigpath():
        return plus_one(v=big_keys()["outputs"][2 ** 70])

    eng = _engine(tmp_path, "process")
    try:
        _ready(eng.recorder)
        r = bigpath.run(engine=eng)
        assert r.state is RunState.SUCCESS, r.error
        assert r.value["outputs"]["result"] == 8
        assert eng.recorder.writer == "process"
        deps = {t.node_id: t.inputs.get("deps") for t in eng.metadata.get_tasks(r.run_id)}
        assert deps["wp_plus_one-0"] == [["wp_big_keys-0", ["outputs", 2 ** 70]]]
    finally:
        eng.close()


def test_a_hand_over_packs_pieces_no_larger_than_a_frame(monkeypatch):
    """However many rows a hand-over releases at once (deferred rows come out together),
    each packed piece holds at most FRAME_MAX of them: the child's frames stay bounded."""
    from twingraph.core.wire import PackedResults, PackedTaskRecords
    from twingraph.engine import loop as loop_module
    monkeypatch.setattr(loop_module, "FRAME_MAX", 2)
    rows = [TaskRecord("r", f"n{i}", "c", TaskState.SUCCESS) for i in range(5)]
    puts = [_put(f"k{i}", str(i).encode()) for i in range(5)]
    log = LogRecord("r", 1.0, "info", "hello")
    out = loop_module._packed([astuple(r) for r in rows], [], [*puts, log])
    assert [type(x).__name__ for x in out] == ["PackedTaskRecords"] * 3 + \
        ["PackedResults"] * 3 + ["LogRecord"]
    assert [x.count for x in out[:6]] == [2, 2, 1, 2, 2, 1]
    assert [r for x in out[:3] if isinstance(x, PackedTaskRecords) for r in x.records()] == rows
    assert [k for x in out[3:6] if isinstance(x, PackedResults) for k in x.keys] == \
        [p.key for p in puts]


def test_a_writer_process_that_fails_to_start_warns_only_while_it_is_needed(tmp_path,
                                                                           monkeypatch, caplog):
    """A failed start is worth a warning while the recorder writes (it falls back to its own
    thread); once the recorder is closed, its stores may be gone and nothing is lost."""
    from twingraph.engine import writer as writer_module

    failing = "import sys, time\ntime.sleep(0.3)\nsys.exit(3)\n"    # dies before 'ready'
    monkeypatch.setattr(writer_module, "_BOOT", failing)
    results = SQLiteStorage(str(tmp_path / "r.db"))
    try:
        for close_first, warned in ((False, True), (True, False)):
            caplog.clear()
            rec = Recorder(results, None)
            try:
                rec.offload()
                if close_first:
                    rec.close()
                deadline = time.monotonic() + 10
                while rec._offload == "starting" and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert rec._offload == "failed"
            finally:
                rec.close()
            assert any("did not start" in r.getMessage() for r in caplog.records) is warned
    finally:
        results.close()
