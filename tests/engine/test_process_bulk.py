"""Large buffers between the driver and its worker processes go through a file in shared memory,
mapped on the other side, not through the pipe (``executors/bulk.py``): a process task's
200 MB array is no longer copied three times in the driver.

Real spawned workers, real files in the pool's directory; the RSS figures come from a fresh
Python process (``ru_maxrss``), so the test's own allocations do not count.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from twingraph import component, pipeline
from twingraph.engine.engine import Engine
from twingraph.engine.task import Job, Task
from twingraph.executors import bulk
from twingraph.executors.processes import ProcessPool

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers need not import pytest

MiB = 2**20


def _run(pool: ProcessPool, fn: Any, *args: Any) -> Any:
    job = Job(Task("n", 0, None, fn, args, {}), fn, args, {}, "process")
    done = threading.Event()
    out: list[Any] = []
    pool.submit(job, lambda o: (out.append(o), done.set()))
    assert done.wait(60), "the job never ended"
    return out[0]


def doubled_in_place(arr: Any) -> Any:
    arr *= 2                          # its own copy-on-write pages: the driver's stay as they are
    return {"sum": float(arr.sum()), "writable": arr.flags.writeable, "arr": arr}


def ones(n: int) -> Any:
    return np.ones(n)


def strided(arr: Any) -> Any:
    return arr[::2], np.asfortranarray(arr.reshape(-1, 4))


def files_left(pool: ProcessPool) -> list[str]:
    return sorted(n for n in os.listdir(pool._dir) if not n.startswith(".")) if pool._dir else []


@pytest.fixture
def pool() -> Any:
    p = ProcessPool(1)
    try:
        yield p
    finally:
        p.shutdown()


def test_an_argument_and_a_result_cross_through_a_mapped_file_and_none_is_left(pool) -> None:
    assert pool._dir is not None and pool._dir.startswith("/dev/shm/")
    arr = np.arange(4 * MiB // 8, dtype=np.float64)
    out = _run(pool, doubled_in_place, arr)
    assert out.ok, out.error
    assert out.value["sum"] == float(arr.sum()) * 2
    assert out.value["writable"] is True          # the task may change its argument...
    assert arr[1] == 1.0                          # ...and the driver's array is untouched
    back = out.value["arr"]
    assert np.array_equal(back, arr * 2)
    assert not back.flags.writeable               # a result is kept as it is, as thread ones
    assert isinstance(back.base, (memoryview, np.ndarray))
    assert files_left(pool) == []                 # both files unlinked once mapped


def test_views_that_are_not_contiguous_and_fortran_order_arrive_equal(pool) -> None:
    arr = np.arange(2 * MiB, dtype=np.float64)
    out = _run(pool, strided, arr)
    assert out.ok, out.error
    half, fortran = out.value
    assert np.array_equal(half, arr[::2])
    assert np.array_equal(fortran, arr.reshape(-1, 4)) and fortran.flags.f_contiguous


def test_the_pool_directory_goes_with_the_pool_and_a_killed_drivers_is_swept() -> None:
    p = ProcessPool(1)
    directory = p._dir
    assert directory is not None and os.path.isdir(directory)
    assert _run(p, ones, 3 * MiB // 8).ok
    p.shutdown()
    assert not os.path.exists(directory)
    # a directory whose pool is gone (nothing holds its .owner lock) is removed by the next
    # pool; one whose lock is held (a live pool, in any process or PID namespace) is not
    left = Path("/dev/shm") / "twingraph-bulk-999999999-abcd"
    left.mkdir()
    (left / ".owner").write_bytes(b"")
    (left / "1-0").write_bytes(b"x" * 100)
    live = ProcessPool(1)
    try:
        q = ProcessPool(1)
        q.shutdown()
        assert not left.exists()
        assert live._dir is not None and os.path.isdir(live._dir)
    finally:
        live.shutdown()
        import shutil
        shutil.rmtree(left, ignore_errors=True)


def test_a_forked_child_ending_leaves_the_pool_directory_alone(pool) -> None:
    import multiprocessing
    child = multiprocessing.get_context("fork").Process(target=os.getpid)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    import gc
    gc.collect()
    assert pool._dir is not None and os.path.isdir(pool._dir)
    out = _run(pool, doubled_in_place, np.ones(2 * MiB // 8))
    assert out.ok and out.value["sum"] == 2 * MiB // 8 * 2


def big_and_small() -> Any:
    return {"big": np.ones(32 * MiB // 8), "small": np.ones(2 * MiB // 8)}


def _mapped_files(directory: str) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if directory in line]


def test_keeping_one_output_keeps_only_its_own_memory(pool) -> None:
    """One file per buffer: a small output kept does not keep a large one mapped (one file for
    the whole message kept 800 MB in shared memory for a 2 MB output)."""
    out = _run(pool, big_and_small)
    assert out.ok
    small = out.value["small"]
    assert len(_mapped_files(pool._dir)) == 2
    del out
    import gc
    gc.collect()
    assert len(_mapped_files(pool._dir)) == 1 and small.sum() == 2 * MiB // 8


def test_a_message_that_would_crowd_shared_memory_travels_in_the_pipe(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bulk, "SHARE_OF_FREE", 0.0)
    packed = bulk.dumps(np.zeros(MiB), str(tmp_path))
    assert packed.files == () and not [n for n in os.listdir(tmp_path) if not n.startswith(".")]
    assert bulk.loads(packed.data, writable=False).shape == (MiB,)


def test_a_picklebuffer_of_the_callers_stays_usable(tmp_path) -> None:
    data = pickle.PickleBuffer(bytearray(b"x" * 2 * MiB))
    for _ in range(2):                              # sent twice: a retry
        packed = bulk.dumps({"d": data}, str(tmp_path))
        assert len(packed.files) == 1
        assert bytes(bulk.loads(packed.data, writable=False)["d"]) == b"x" * 2 * MiB
    assert data.raw().nbytes == 2 * MiB


def dies_after_writing_a_result_file() -> None:
    import glob
    import os as _os
    (directory,) = glob.glob(f"/dev/shm/twingraph-bulk-{_os.getppid()}-*")
    with open(f"{directory}/{_os.getpid()}-7", "wb") as f:
        f.write(b"\0" * 2**20)
    _os._exit(3)


def test_a_worker_that_dies_leaves_no_file(pool) -> None:
    out = _run(pool, dies_after_writing_a_result_file)
    assert not out.ok and "died" in str(out.error)
    assert files_left(pool) == []


def test_without_room_for_the_file_the_message_carries_everything(tmp_path) -> None:
    arr = np.arange(2 * MiB // 8, dtype=np.float64)
    packed = bulk.dumps({"a": arr}, str(tmp_path / "gone"), b"R")   # no such directory
    assert packed.files == () and packed.data[:2] == b"RP"
    assert np.array_equal(bulk.loads(packed.data[1:], writable=False)["a"], arr)


def test_a_message_naming_a_file_outside_the_pool_is_refused(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    packed = bulk.dumps(np.zeros(MiB), str(a))
    (file,) = packed.files
    assert Path(file).parent == a
    with pytest.raises(bulk.TransferError, match="outside its pool"):
        bulk.loads(packed.data, writable=False, directory=str(b))
    assert Path(file).exists()                     # refused before it was touched
    value = bulk.loads(packed.data, writable=False, directory=str(a))
    assert value.shape == (MiB,) and not Path(file).exists()
    packed.discard()                               # the sender's clean-up: already gone, fine


def test_small_buffers_stay_in_the_message(tmp_path) -> None:
    packed = bulk.dumps([np.zeros(10), b"x" * 2 * MiB], str(tmp_path))
    assert packed.files == () and not [n for n in os.listdir(tmp_path) if not n.startswith(".")]


_DRIVER = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from twingraph import component, pipeline
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.factory import create_storage_backend

    n = int(sys.argv[2]) // 8

    @component(executor="process")
    def produce(n):
        return {"arr": np.ones(n)}

    @component(executor="process")
    def total(arr):
        return float(arr.sum())

    @pipeline(name="bulk_rss")
    def p(n):
        return total(arr=produce(n=n)["outputs"]["arr"])

    root = sys.argv[1]
    eng = Engine(results=create_storage_backend("sqlite", root + "/r.db"),
                 metadata=SQLMetadataStore(f"sqlite:///{root}/m.db", create=True))
    p.run(engine=eng, no_cache=True, n=1000)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = p.run(engine=eng, no_cache=True, n=n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    eng.close()
    print(json.dumps({"value": r.value["outputs"]["result"], "growth": peak - base}))
""")


def test_the_driver_holds_a_process_tasks_large_result_once(tmp_path) -> None:
    """Produced in one worker, stored and handed to another: the driver grew by about the
    array (mapped), where the pipe's pickles made it ~3-4 times that."""
    size = 96 * MiB
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    out = subprocess.run([sys.executable, str(script), str(tmp_path), str(size)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert row["value"] == float(size // 8)
    assert row["growth"] < 1.5 * size, row["growth"] / size


def test_a_message_pickles_only_what_it_must() -> None:
    """The inline form is plain cloudpickle at the highest protocol (what the pipe carried)."""
    packed = bulk.dumps((1, "two"), None)
    assert packed.data[:1] == b"P" and pickle.loads(packed.data[1:]) == (1, "two")


@component(executor="process")
def _scaled(arr, k):
    return arr * k


@pipeline(name="bulk_pipeline")
def _scaling(arr):
    return _scaled(arr=_scaled(arr=arr, k=2)["outputs"]["result"], k=3)


def test_a_pipeline_of_process_tasks_passes_large_arrays_along(tmp_path) -> None:
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.factory import create_storage_backend
    eng = Engine(results=create_storage_backend("sqlite", str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path}/m.db", create=True))
    try:
        arr = np.arange(MiB, dtype=np.float64)
        r = _scaling.run(engine=eng, arr=arr)
        assert r.error is None
        assert np.array_equal(r.value["outputs"]["result"], arr * 6)
        again = _scaling.run(engine=eng, arr=arr)            # memo hits read them back
        assert np.array_equal(again.value["outputs"]["result"], arr * 6)
    finally:
        eng.close()


def test_every_embedded_engine_sweeps_what_a_killed_driver_left(tmp_path, monkeypatch) -> None:
    """A driver killed with SIGKILL leaves its files in shared memory; thread-only runs never
    make a pool, so the engine the CLI builds sweeps too."""
    from twingraph.runtime import build_engine
    from twingraph.settings import Settings
    left = Path(bulk.shared_base()) / "twingraph-bulk-999999998-wxyz"
    left.mkdir()
    (left / ".owner").write_bytes(b"")
    (left / "5-0").write_bytes(b"x" * 1000)
    monkeypatch.setenv("TWINGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TWINGRAPH_DATABASE_URL", raising=False)
    try:
        build_engine(Settings.from_env()).close()
        assert not left.exists()
    finally:
        import shutil
        shutil.rmtree(left, ignore_errors=True)


def total(arr: Any) -> float:
    return float(arr.sum())


def test_a_large_argument_under_a_memory_limit_fails_as_over_the_limit_not_as_an_import() -> None:
    """The argument is mapped before it is unpickled; NumPy imported on unpickling then found
    no room and the task failed with ``ImportError: Importing the numpy C-extensions failed``.
    Limited workers import NumPy before the limit is set, when the driver uses it."""
    from twingraph.errors import MemoryLimitExceeded
    p = ProcessPool(1, memory_limit=96 * MiB)
    try:
        fits = _run(p, total, np.ones(64 * MiB // 8))
        assert fits.ok, fits.error
        assert fits.value == 64 * MiB // 8
        too_big = _run(p, total, np.ones(128 * MiB // 8))
        assert not too_big.ok and isinstance(too_big.error, MemoryLimitExceeded), too_big.error
    finally:
        p.shutdown()


def many_arrays(n: int) -> Any:
    return [np.full(MiB // 8 + 1, i, dtype=np.float64) for i in range(n)]


def test_a_message_maps_at_most_max_files_and_descriptors_last(pool) -> None:
    """Each mapping keeps a descriptor open (``mmap`` duplicates it before Python 3.13): a
    message of 1,100 large buffers failed with EMFILE, named a memory error. A message maps at
    most ``MAX_FILES`` buffers (the rest travel in the pipe) and the driver's soft limit of
    open files is raised to the hard one for the results it keeps."""
    import resource
    out = _run(pool, many_arrays, bulk.MAX_FILES + 36)
    assert out.ok, out.error
    assert [int(a[0]) for a in out.value] == list(range(bulk.MAX_FILES + 36))
    assert len(_mapped_files(pool._dir)) == bulk.MAX_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or sys.version_info >= (3, 13)


def test_a_directory_is_never_seen_unheld_by_a_sweep(tmp_path) -> None:
    """It is made under a name sweeps skip, locked, then renamed: a sweep in another process
    took the lock of a directory not yet locked and removed a live pool's directory."""
    d = bulk.PoolDirectory()
    try:
        assert os.path.basename(d.path).startswith("twingraph-bulk-")
        assert not [n for n in os.listdir(bulk.shared_base())
                    if n.startswith(".twingraph-bulk-making-") and str(os.getpid()) in n]
        bulk.sweep(bulk.shared_base())
        assert os.path.isdir(d.path)                   # held: left alone
    finally:
        d.remove()
    assert not os.path.exists(d.path)


def test_a_message_that_does_not_fit_beside_another_travels_in_the_pipe(tmp_path) -> None:
    """Each message alone was within half the free space; several written at once filled a
    small /dev/shm (Docker's 64 MB). Room is checked and taken under one lock, so of two
    messages that do not both fit, the second sees the first one's room gone."""
    small = tmp_path / "shm"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        size = int(bulk._free(str(small)) * 0.45)        # each alone fits in half; not both
        first = bulk.dumps(np.zeros(size // 8), str(small))
        second = bulk.dumps(np.zeros(size // 8), str(small))
        assert len(first.files) == 1
        assert second.files == ()                  # the first one's room was taken already
        first.discard()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def _refuse() -> None:
    raise ConnectionRefusedError("the service said no")


class _Reconnects:
    """Unpickles by reconnecting (as a client object may): its own OSError on the way in."""

    def __reduce__(self):
        return (_refuse, ())


def returns_a_reconnecting_value() -> Any:
    return _Reconnects()


def test_a_results_own_oserror_on_load_is_its_own_not_a_transfer_failure(pool) -> None:
    """The transfer's failures (its files) are ``TransferFailed``; an ``OSError`` the value's own
    code raises as it is rebuilt keeps its class (a retry policy may match it)."""
    out = _run(pool, returns_a_reconnecting_value)
    assert not out.ok
    assert out.error.error_type == "ConnectionRefusedError", out.error
