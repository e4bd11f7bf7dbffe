"""Checkpoint storage, savepoints, restore (also rescaled 2 -> 3 -> 1), state backends, file sink."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from twingraph.errors import CheckpointError
from twingraph.stream import (CheckpointStorage, CollectSink, FileSink, FileSource, KeyedProcessFunction,
                              MapState, SourceSplitContext, StreamExecutionEnvironment, TumblingWindow,
                              ValueState, WatermarkStrategies, read_committed)
from twingraph.stream.keygroups import key_group_range
from twingraph.stream.state import KeyedStateStore, MemoryStateBackend, SQLiteStateBackend

# Whoever adds a state backend: add it here, and the contract below runs over it.
BACKENDS = ["memory", "sqlite"]


def make_backend(kind: str, tmp: Path, name: str) -> Any:
    if kind == "memory":
        return MemoryStateBackend(128)
    return SQLiteStateBackend(128, tmp / f"{name}.db", cache_size=50)


@pytest.mark.parametrize("kind", BACKENDS)
def test_backend_contract_state_primitives_snapshot_and_key_group_filter(kind: str, tmp_path: Path) -> None:
    b = make_backend(kind, tmp_path, "a")
    store = KeyedStateStore(b)
    v, m = ValueState(store, "v"), MapState(store, "m")
    for i in range(300):  # more rows than the SQLite cache holds
        store.current_key = f"k{i}"
        v.update(i)
        m.put("x", i * 2)
    store.current_key = "k7"
    assert v.get() == 7 and m.get("x") == 14 and m.contains("x") and not m.contains("y")
    m.remove("x")
    assert m.items() == []
    store.current_key = "missing"
    assert v.get() is None
    size = b.snapshot(tmp_path / "snap")
    assert size > 0
    # restore into two halves: every key lands in exactly one, with its value
    halves = []
    for sub in range(2):
        r = make_backend(kind, tmp_path, f"r{sub}")
        r.restore([tmp_path / "snap"], key_group_range(sub, 128, 2))
        rs = KeyedStateStore(r)
        rv = ValueState(rs, "v")
        got = {}
        for i in range(300):
            rs.current_key = f"k{i}"
            if rv.get() is not None:
                got[i] = rv.get()
        halves.append(got)
    assert set(halves[0]) | set(halves[1]) == set(range(300))
    assert not set(halves[0]) & set(halves[1])
    assert all(k == val for h in halves for k, val in h.items())


def test_storage_publishes_atomically_and_keeps_the_last_n(tmp_path: Path) -> None:
    s = CheckpointStorage(tmp_path, retained=2)
    for cid in (1, 2, 3):
        d = s.begin(cid, savepoint=False)
        (d / "x.state").write_bytes(b"data")
        assert s.latest() is None or s.latest() != d
        s.complete(cid, False, {"checkpoint_id": cid})
    assert [p.name for p in s.completed()] == ["chk-00000002", "chk-00000003"]
    s.begin(4, savepoint=False)  # a crash here leaves an in-progress directory ...
    assert s.latest() is not None and s.latest().name == "chk-00000003"
    CheckpointStorage(tmp_path, retained=2)  # ... that the next start removes
    assert not list(tmp_path.glob("*.inprogress"))


class BudgetedFileSource(FileSource):
    """A FileSource that stops handing out lines after a shared budget (to stop a job mid-way)."""

    def __init__(self, path: Any, budget: dict[str, int]) -> None:
        super().__init__(path)
        self.budget = budget

    def poll(self, max_records: int) -> list[tuple[Any, int | None]]:
        left = self.budget["left"]
        if left <= 0:
            return []
        out = super().poll(min(max_records, left))
        self.budget["left"] -= len(out)
        return out


class RunningCount(KeyedProcessFunction):
    def open(self, runtime_context: Any) -> None:
        self.count = ValueState(runtime_context.state_backend, "count")
        self.first = MapState(runtime_context.state_backend, "first")

    def process_element(self, value: Any, ctx: Any) -> Any:
        n = (self.count.get() or 0) + 1
        self.count.update(n)
        if not self.first.contains("ts"):
            self.first.put("ts", value[1])
        return [("running", value[0], n)]


def write_inputs(d: Path, files: int = 4, lines: int = 600) -> Path:
    d.mkdir()
    for f in range(files):
        with open(d / f"part-{f}.txt", "w") as fh:
            for i in range(lines):
                fh.write(f"w{(i * 13 + f) % 23},{i * 10 + f}\n")
    return d


def build(inputs: Path, chk: Path, parallelism: int, backend: str, sink: Any, budget: dict[str, int]) -> StreamExecutionEnvironment:
    env = StreamExecutionEnvironment("rescale").set_parallelism(parallelism).set_batch_size(20)
    env.set_checkpoint_storage(chk).set_state_backend(backend, chk.parent / "state")
    # no element is ever late (disorder bound > span), so results do not depend on arrival order
    parsed = env.add_source(BudgetedFileSource(inputs, budget),
                            WatermarkStrategies.bounded_out_of_orderness(10**9),
                            timestamp_assigner=lambda line: int(line.split(",")[1])).uid("files") \
        .map(lambda line: (line.split(",")[0], int(line.split(",")[1])))
    parsed.key_by(lambda e: e[0]).window(TumblingWindow(1000)).apply(
        lambda k, w, xs: [("window", k, w[0], len(xs))]).uid("window").add_sink(sink)
    parsed.key_by(lambda e: e[0]).process(RunningCount()).uid("running").add_sink(sink)
    return env


def run_until_budget_spent(env: StreamExecutionEnvironment, budget: dict[str, int], restore: str | None) -> str:
    client = env.execute_async(restore_from=restore)
    deadline = time.monotonic() + 30
    while budget["left"] > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    path = client.cancel(with_savepoint=True)
    assert path is not None and client.status.value == "CANCELED"
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_savepoint_restore_with_parallelism_2_3_1_equals_an_uninterrupted_run(tmp_path: Path, backend: str) -> None:
    inputs = write_inputs(tmp_path / "in")
    total = 4 * 600

    reference = CollectSink()
    build(inputs, tmp_path / "ref-chk", 2, backend, reference, {"left": 10**9}).execute()
    assert len([r for r in reference.results if r[0] == "running"]) == total

    sink = CollectSink()
    budget = {"left": total // 3}
    sp1 = run_until_budget_spent(build(inputs, tmp_path / "chk", 2, backend, sink, budget), budget, None)
    budget["left"] = total // 3
    sp2 = run_until_budget_spent(build(inputs, tmp_path / "chk", 3, backend, sink, budget), budget, sp1)
    budget["left"] = 10**9
    build(inputs, tmp_path / "chk", 1, backend, sink, budget).execute(restore_from=sp2)

    manifest = json.loads((Path(sp2) / "_metadata.json").read_text())
    assert manifest["kind"] == "savepoint" and manifest["operators"]["window"]["parallelism"] == 3
    assert Counter(sink.results) == Counter(reference.results)


def test_restore_refuses_a_different_max_parallelism_and_unknown_operators(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", files=1, lines=50)
    budget = {"left": 10}
    sp = run_until_budget_spent(build(inputs, tmp_path / "chk", 1, "memory", CollectSink(), budget), budget, None)
    env = build(inputs, tmp_path / "chk", 1, "memory", CollectSink(), {"left": 10**9}).set_max_parallelism(64)
    with pytest.raises(CheckpointError, match="max parallelism"):
        env.execute(restore_from=sp)
    other = StreamExecutionEnvironment("other").set_checkpoint_storage(tmp_path / "chk")
    other.from_collection([1]).add_sink(CollectSink())
    with pytest.raises(CheckpointError, match="does not have"):
        other.execute(restore_from=sp)
    with pytest.raises(CheckpointError):
        other.execute(restore_from=str(tmp_path / "nope"))


def test_savepoint_on_demand_while_running(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", files=1, lines=200)
    budget = {"left": 100}
    env = build(inputs, tmp_path / "chk", 2, "memory", CollectSink(), budget)
    client = env.execute_async()
    while budget["left"] > 0:
        time.sleep(0.01)
    sp = client.trigger_savepoint()
    assert Path(sp, "_metadata.json").exists() and "savepoints" in sp
    assert client.cancel() is None
    assert client.status.value == "CANCELED"


def test_periodic_checkpoints_keep_only_the_retained_ones(tmp_path: Path) -> None:
    def slow(x: Any) -> Any:
        time.sleep(0.005)
        return x

    env = StreamExecutionEnvironment("periodic").set_batch_size(1)
    env.enable_checkpointing(20, tmp_path / "chk", retained=2, fsync=False)
    sink = CollectSink()
    env.from_collection(range(100)).map(slow).add_sink(sink)
    env.execute()
    assert sink.results == list(range(100))
    done = CheckpointStorage(tmp_path / "chk").completed()
    assert len(done) == 2
    assert int(done[-1].name.split("-")[1]) > 3  # several periodic checkpoints came before


def test_file_sink_publishes_only_on_commit_and_recommits_idempotently(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = FileSink(out)
    s.open(SourceSplitContext(0, 1))
    s.write(["a", "b"])
    assert read_committed(out) == []
    state = s.pre_commit(1)
    assert read_committed(out) == []
    s.commit(1, state)
    s.commit(1, state)  # again, as on restore
    assert read_committed(out) == ["a", "b"]
    s.write(["c"])
    s.pre_commit(2)  # never committed: the checkpoint did not complete
    s.write(["d"])  # in progress when the process died
    s2 = FileSink(out)
    s2.open(SourceSplitContext(0, 1, restored=state, restored_checkpoint_id=1))
    s2.commit(1, state)
    assert read_committed(out) == ["a", "b"]
    assert not [f for f in out.iterdir() if f.name.startswith(".")]
    with pytest.raises(CheckpointError):
        s2.commit(3, {"pending": [[".gone.pending", "part-x"]]})


def test_file_source_resumes_after_the_snapshot_position(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", files=2, lines=5)
    src = FileSource(inputs)
    src.open(SourceSplitContext(0, 1))
    first = src.poll(7)
    state = src.snapshot(1)
    rest = FileSource(inputs)
    rest.open(SourceSplitContext(0, 1, restored=state))
    tail = []
    while not rest.finished():
        tail += rest.poll(3)
    assert [v for v, _ in first + tail] == [line for f in sorted(inputs.iterdir()) for line in f.read_text().splitlines()]
