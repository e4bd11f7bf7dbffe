"""Memoization by content: hits, misses with reasons, code changes, cache=False, --no-cache."""
import sys
import textwrap

import pytest

from tests.resources import behaviours as b
from twingraph import component, pipeline
from twingraph.cli.loading import load_module
from twingraph.core.states import RunState

PIPELINE_SRC = '''
from twingraph import component, pipeline
calls = []

@component
def load(n):
    calls.append("load")
    return {{"xs": list(range(n))}}

@component
def square(x):
    calls.append("square")
    return {{"y": x * x {square_tweak}}}

@component
def cube(x):
    calls.append("cube")
    return {{"y": x ** 3}}

@component
def total(ys, zs):
    calls.append("total")
    return {{"sum": sum(ys) + sum(zs)}}

@pipeline(name="memo_demo")
def memo_demo(n=3):
    raw = load(n=n)
    sq = [square(x=x) for x in raw["outputs"]["xs"]]
    cu = [cube(x=x) for x in raw["outputs"]["xs"]]
    return total(ys=[s["outputs"]["y"] for s in sq], zs=[c["outputs"]["y"] for c in cu])
'''


def _module(tmp_path, name, tweak=""):
    path = tmp_path / f"{name}.py"
    path.write_text(PIPELINE_SRC.format(square_tweak=tweak))
    return load_module(str(path))


def test_unchanged_rerun_hits_everything(engine, tmp_path):
    m = _module(tmp_path, "memo_v1")
    r1 = m.memo_demo.run(engine=engine)
    assert sorted(m.calls) == ["cube"] * 3 + ["load"] + ["square"] * 3 + ["total"]
    m.calls.clear()
    r2 = m.memo_demo.run(engine=engine)
    assert m.calls == []
    assert r2.value == r1.value
    tasks = engine.metadata.get_tasks(r2.run_id)
    assert {t.cache_status for t in tasks} == {"hit"}
    assert all(t.cache_reason for t in tasks)


def test_changing_a_component_reruns_it_and_downstream_only(engine, tmp_path):
    v1 = _module(tmp_path, "memo_v2a")
    v1.memo_demo.run(engine=engine)
    v2 = _module(tmp_path, "memo_v2b", tweak="+ 1")      # square's code changed
    r = v2.memo_demo.run(engine=engine)
    assert sorted(v2.calls) == ["square"] * 3 + ["total"]
    assert r.value["outputs"]["sum"] == (0 + 1 + 4 + 3) + (0 + 1 + 8)
    by = {t.node_id: t for t in engine.metadata.get_tasks(r.run_id)}
    assert by["square-0"].cache_status == "miss"
    assert by["square-0"].cache_reason == "code changed since the last run"
    assert by["total-0"].cache_reason == "inputs changed since the last run"
    assert by["cube-0"].cache_status == "hit" and by["load-0"].cache_status == "hit"


def test_a_result_missing_from_this_store_is_not_called_an_input_change(engine, tmp_path):
    """Same code, config and inputs as the last run, but the result store is another one (or
    was wiped): the miss said 'inputs changed since the last run'."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.results.memory import MemoryStorage

    m = _module(tmp_path, "memo_other_store")
    m.memo_demo.run(engine=engine)
    other = Engine(results=MemoryStorage(), metadata=engine.metadata, flush_interval=0.01)
    try:
        r = m.memo_demo.run(engine=other)
        tasks = other.metadata.get_tasks(r.run_id)
        assert {t.cache_status for t in tasks} == {"miss"}
        assert {t.cache_reason for t in tasks} == {
            "no stored result in this result store (same code, config and inputs as the "
            "last run)"}
    finally:
        other.close()


def test_no_cache_reruns_everything(engine, tmp_path):
    m = _module(tmp_path, "memo_v3")
    m.memo_demo.run(engine=engine)
    m.calls.clear()
    r = m.memo_demo.run(engine=engine, no_cache=True)
    assert len(m.calls) == 8
    assert {t.cache_status for t in engine.metadata.get_tasks(r.run_id)} == {"disabled"}


def test_cache_false_component_always_runs(engine):
    b.counts.clear()

    @component(cache=False)
    def uncached(x):
        b.bump("uncached")
        return x

    @pipeline(name="uncached")
    def p():
        return uncached(x=1)

    p.run(engine=engine)
    p.run(engine=engine)
    assert b.counts["uncached"] == 2


def test_identical_subgraphs_in_one_run_are_computed_once(engine):
    b.counts.clear()

    @pipeline(name="twins")
    def p():
        a1 = b.quick(x=5)
        a2 = b.quick(x=5)
        c1 = b.quick(x=a1["outputs"]["result"])
        c2 = b.quick(x=a2["outputs"]["result"])
        return [c1, c2]

    r = p.run(engine=engine)
    assert b.counts == {"quick-5": 1, "quick-6": 1}
    assert [v["outputs"]["result"] for v in r.value] == [7, 7]


def test_same_output_upstream_keeps_downstream_cached(engine, tmp_path):
    """Keys hash input *content*: an upstream code change with equal output cuts off."""
    v1 = _module(tmp_path, "memo_v4a")
    v1.memo_demo.run(engine=engine)
    v2 = _module(tmp_path, "memo_v4b", tweak="+ 0")     # new code, same values
    v2.memo_demo.run(engine=engine)
    assert sorted(v2.calls) == ["square"] * 3


def test_large_array_passes_between_local_tasks_without_copy(engine):
    np = pytest.importorskip("numpy")
    seen = {}

    @component
    def make():
        arr = np.arange(1_000_000, dtype=np.float64)
        seen["produced"] = arr.__array_interface__["data"][0]
        return {"arr": arr}

    @component
    def consume(arr):
        seen["consumed"] = arr.__array_interface__["data"][0]
        return float(arr.sum())

    @pipeline(name="arrays")
    def p():
        return consume(arr=make()["outputs"]["arr"])

    r = p.run(engine=engine)
    assert r.value["outputs"]["result"] == float(np.arange(1_000_000).sum())
    assert seen["produced"] == seen["consumed"]


def test_a_corrupted_memo_entry_is_removed_and_recomputed_next_run(sqlite_engine):
    """A stored result whose bytes no longer match their hash must not poison every later run:
    the run that reads it fails with IntegrityError, the entry is removed, and the next run
    misses and recomputes it."""
    import sqlite3

    from twingraph.errors import IntegrityError

    @component
    def make(n):
        return {"values": list(range(n))}

    @component
    def total(values):
        return sum(values)

    @pipeline(name="corrupt_me")
    def p(n: int):
        return total(values=make(n=n)["outputs"]["values"])

    eng = sqlite_engine
    first = p.run(engine=eng, n=50)
    assert first.value["outputs"]["result"] == sum(range(50))
    key = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["total-0"].result_key
    eng.results.close()
    with sqlite3.connect(eng.results.db_path) as db:
        (data,) = db.execute("SELECT data FROM node_results WHERE node_id=?", (key,)).fetchone()
        db.execute("UPDATE node_results SET data=? WHERE node_id=?", (b"9" + data[1:], key))
    from twingraph.stores.results.sqlite import SQLiteStorage
    eng.results = eng.recorder.results = SQLiteStorage(str(eng.results.db_path))

    second = p.run(engine=eng, n=50)
    assert second.state is RunState.FAILED
    err = second.error
    assert isinstance(err, IntegrityError) or isinstance(err.__cause__, IntegrityError), err
    assert "removed" in str(err)
    assert not eng.results.has(key)

    third = p.run(engine=eng, n=50)
    assert third.state is RunState.SUCCESS and third.value["outputs"]["result"] == sum(range(50))
    tasks = {t.node_id: t for t in eng.metadata.get_tasks(third.run_id)}
    assert tasks["make-0"].cache_status == "hit" and tasks["total-0"].cache_status == "miss"


@pytest.mark.parametrize("damage", ["sqlite: a chunk lost", "filesystem: data file lost",
                                    "filesystem: data type unknown"])
def test_other_damage_to_a_memo_entry_does_not_break_every_later_run(tmp_path, damage):
    """Only a hash mismatch removed a damaged entry: a lost chunk or data file, or metadata
    naming no data type, raised another error, and every later run hit the entry again."""
    import json
    import sqlite3

    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results import FilesystemStorage, SQLiteStorage

    def store():
        if damage.startswith("sqlite"):
            return SQLiteStorage(str(tmp_path / "r.db"), chunk_threshold=1024, chunk_size=1024)
        return FilesystemStorage(str(tmp_path / "fs"), inline_threshold=64)

    eng = Engine(results=store(), metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}",
                                                            create=True))

    @component
    def make(n):
        return {"values": list(range(n))}

    @component
    def total(values):
        return values[::-1]          # large: chunked, or a data file of its own

    @pipeline(name="damage_me")
    def p(n: int):
        return total(values=make(n=n)["outputs"]["values"])

    try:
        first = p.run(engine=eng, n=2000)
        key = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["total-0"].result_key
        eng.results.close()
        if damage == "sqlite: a chunk lost":
            with sqlite3.connect(tmp_path / "r.db") as db:
                db.execute("DELETE FROM node_data_chunks WHERE node_id=? AND chunk_id=1", (key,))
            db.close()
        else:
            meta = tmp_path / "fs" / "metadata" / "nodes" / f"{key}.json"
            doc = json.loads(meta.read_text())
            if damage == "filesystem: data file lost":
                (tmp_path / "fs" / doc["storage"]["path"]).unlink()
            else:
                doc["data_type"] = "bogus"
                meta.write_text(json.dumps(doc))
        eng.results = eng.recorder.results = store()
        runs = [p.run(engine=eng, n=2000) for _ in range(2)]
        assert runs[-1].state is RunState.SUCCESS, runs[-1].error
        assert runs[-1].value["outputs"]["result"] == list(range(2000))[::-1]
        assert eng.results.read(key) is not None           # stored whole again
    finally:
        eng.close()


SPELLINGS_SRC = '''
from twingraph import BaseComponent, component, pipeline
calls = []

@component
def scale(x, factor=2, *, label="s"):
    calls.append(("scale", x, factor, label))
    return x * factor

class Offset(BaseComponent):
    def execute(self, x, by=10):
        calls.append(("offset", x, by))
        return x + by

offset = Offset()

@pipeline(name="spellings")
def first():
    return [r["outputs"]["result"] for r in (scale(3), offset(1))]

@pipeline(name="spellings")
def second():
    rs = [scale(x=3, factor=2), scale(3, 2, label="s"), offset(x=1, by=10), scale(3, 5)]
    return [r["outputs"]["result"] for r in rs]
'''


def test_one_call_spelled_differently_is_one_memo_key(engine, tmp_path):
    """``f(3)``, ``f(x=3)`` and ``f(3, 2)`` (2 the default) run once, across runs and within
    one; a value other than the default is another computation."""
    path = tmp_path / "spellings_mod.py"
    path.write_text(SPELLINGS_SRC)
    m = load_module(str(path))
    r1 = m.first.run(engine=engine)
    assert r1.value == [6, 11]
    m.calls.clear()
    r2 = m.second.run(engine=engine)
    assert r2.value == [6, 6, 11, 15]
    assert m.calls == [("scale", 3, 5, "s")]
    by = {t.node_id: t for t in engine.metadata.get_tasks(r2.run_id)}
    assert by["scale-0"].cache_status == "hit"
    assert by["scale-1"].cache_status == "hit"
    assert by["Offset-0"].cache_status == "hit"
    assert by["scale-2"].cache_status == "miss"


ORDER_SRC = '''
from twingraph import component, pipeline
calls = []

@component
def build(first, second):
    calls.append("build")
    return {"d": {first: 0, second: 0}}

@component
def keys(d):
    calls.append("keys")
    return {"keys": list(d)}

@pipeline(name="order")
def order(first="b", second="a"):
    d = build(first=first, second=second)
    return {"built": d["outputs"]["d"], "keys": keys(d=d["outputs"]["d"])["outputs"]["keys"]}

@pipeline(name="order_literal")
def order_literal(reverse=False):
    d = {"b": 0, "a": 0} if reverse else {"a": 0, "b": 0}
    return keys(d=d)["outputs"]["keys"]
'''


def test_dicts_keep_their_order_through_memo_hits_and_order_is_part_of_the_key(sqlite_engine, tmp_path):
    """A memo hit gives back the dict the task built, in its order; a dict input in another
    order is another computation (code that iterates it can tell)."""
    path = tmp_path / "order_mod.py"
    path.write_text(ORDER_SRC)
    m = load_module(str(path))
    r1 = m.order.run(engine=sqlite_engine)
    assert list(r1.value["built"]) == ["b", "a"] and r1.value["keys"] == ["b", "a"]
    m.calls.clear()
    r2 = m.order.run(engine=sqlite_engine)          # all hits: values read from the store
    assert m.calls == []
    assert list(r2.value["built"]) == ["b", "a"] and r2.value["keys"] == ["b", "a"]
    r3 = m.order.run(engine=sqlite_engine, first="a", second="b")
    assert m.calls == ["build", "keys"]     # equal dicts in Python, built in another order
    assert r3.value["keys"] == ["a", "b"]
    m.calls.clear()
    assert m.order_literal.run(engine=sqlite_engine).value == ["a", "b"]
    assert m.order_literal.run(engine=sqlite_engine, reverse=True).value == ["b", "a"]
    assert m.calls == ["keys", "keys"]


INSTANCE_SRC = '''
import enum
from pathlib import Path
from twingraph import BaseComponent, pipeline
calls = []

class Mode(enum.Enum):
    STRICT = "strict"
    LOOSE = "loose"

class Threshold(BaseComponent):
    def __init__(self, config=None, *, cut=0.5, mode=Mode.STRICT, out=Path("a")):
        super().__init__(config)
        self.cut, self.mode, self.out = cut, mode, out
        self.client = object()             # not plain data: counts by its type only
        self.tree = {"name": "root"}
        self.tree["self"] = self.tree      # cyclic: counts by type where it cycles
        self.big = list(range(20_000))     # beyond the item bound: counts by type
        self.model = None                  # loaded lazily by execute

    def execute(self, data):
        calls.append((self.cut, self.mode.value, str(self.out)))
        if self.model is None:
            self.model = {"loaded": True}  # a change made by running: not a new key
        return {"kept": [x for x in data if x > self.cut * self.config.get("scale", 1)]}

@pipeline(name="instance_state")
def p(proc):
    return proc(data=[0.2, 0.6, 0.9])["outputs"]["kept"]
'''


def test_a_class_components_attributes_are_part_of_its_key(engine, tmp_path):
    """Two instances that differ in an attribute set in ``__init__`` (plain data, an enum,
    a path) or in ``config`` have keys of their own: neither hits the other's results.
    Attributes that are objects, cyclic or huge do not break keying; what ``execute`` changes
    on the instance does not change its keys."""
    path = tmp_path / "instance_mod.py"
    path.write_text(INSTANCE_SRC)
    m = load_module(str(path))
    T, Mode = m.Threshold, m.Mode
    assert m.p.run(engine=engine, proc=T(cut=0.5)).value == [0.6, 0.9]
    assert m.p.run(engine=engine, proc=T(cut=0.5)).value == [0.6, 0.9]      # a hit
    assert m.calls == [(0.5, "strict", "a")]
    assert m.p.run(engine=engine, proc=T(cut=0.7)).value == [0.9]
    assert m.p.run(engine=engine, proc=T(cut=0.5, mode=Mode.LOOSE)).value == [0.6, 0.9]
    assert m.p.run(engine=engine, proc=T(cut=0.5, out=m.Path("b"))).value == [0.6, 0.9]
    assert m.p.run(engine=engine, proc=T({"scale": 0.5}, cut=0.5)).value == [0.6, 0.9]
    assert len(m.calls) == 5
    proc = T(cut=0.5, mode=Mode.LOOSE)                # same as the fourth: hits, and
    assert m.p.run(engine=engine, proc=proc).value == [0.6, 0.9]
    assert m.p.run(engine=engine, proc=proc).value == [0.6, 0.9]    # execute's change unseen
    assert len(m.calls) == 5


def test_a_config_fingerprint_is_in_no_order_as_its_key_prefix(engine):
    """The config digest task rows record (what a miss's reason compares) reads the config in
    no order, as the key prefix does: reordering a config is not 'configuration changed'."""
    from twingraph.core.specs import ComponentSpec
    a = ComponentSpec.build(name="c", qualname="m:c", code_version="v", config={"a": 1, "b": 2})
    b = ComponentSpec.build(name="c", qualname="m:c", code_version="v", config={"b": 2, "a": 1})
    c = ComponentSpec.build(name="c", qualname="m:c", code_version="v", config={"b": 3, "a": 1})
    assert engine.fingerprint(a)["config"] == engine.fingerprint(b)["config"]
    assert engine.fingerprint(a)["config"] != engine.fingerprint(c)["config"]
    assert engine.key_prefix(a) == engine.key_prefix(b)


def test_a_miss_after_a_failed_or_unmemoized_run_says_so(engine, tmp_path):
    """Same code, config and inputs as last run: the reason said "inputs changed since the
    last run" when last run's task had failed, or the run had --no-cache."""
    from twingraph import component, pipeline
    flag = tmp_path / "fail"
    flag.write_text("x")

    @component(executor="thread")
    def step(x):
        if flag.exists():
            raise RuntimeError("not yet")
        return x

    @pipeline(name="miss_after_failure", error_handler="continue")
    def p():
        return step(x=1)

    @pipeline(name="miss_after_no_cache")
    def q():
        return step(x=2)

    def reason(pipe, **kw):
        r = pipe.run(engine=engine, **kw)
        engine.recorder.flush()
        return engine.metadata.get_tasks(r.run_id)[0].cache_reason

    reason(p)                                    # fails
    flag.unlink()
    assert reason(p) == "no stored result (it was FAILED in the last run)"
    assert reason(q, no_cache=True) == "--no-cache"
    assert reason(q) == "no stored result (the last run did not memoize it)"
    assert reason(q) == "stored result with the same code, config and inputs"


def test_a_consumer_of_a_producers_hash_gets_its_own_producers(engine):
    """``record(h=r["hash"])`` for two producers of equal values: the consumers were twins
    (keyed by the producers' content only) and one returned the other's hash."""
    from twingraph import component, pipeline

    @component
    def a(x):
        return {"v": 1}

    @component
    def record(h):
        return {"provenance": h}

    @component
    def whole(r):
        return {"seen": r["hash"]}

    @pipeline(name="hash_as_input")
    def flow():
        r1, r2 = a(x=1), a(x=2)
        return [r1["hash"], r2["hash"], record(h=r1["hash"]), record(h=r2["hash"]),
                whole(r=r1), whole(r=r2)]

    h1, h2, p1, p2, w1, w2 = flow.run(engine=engine).value
    assert h1 != h2
    assert (p1["outputs"]["provenance"], p2["outputs"]["provenance"]) == (h1, h2)
    assert (w1["outputs"]["seen"], w2["outputs"]["seen"]) == (h1, h2)
