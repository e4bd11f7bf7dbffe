"""Each consumer of a task's result gets its own copy of a mutable value (``own_copy``).

A consumer that changed its input in place changed its siblings' inputs and the producer's
result: a sibling then computed from the changed value and its result was stored under a key
that names the unchanged one (a wrong memo hit in every later run). Immutable values and
read-only NumPy arrays are shared, without a copy. Real engines and stores, no mocks."""
import threading

import numpy as np

from twingraph import component, pipeline
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition)
from twingraph.serialization import own_copy
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage

_both_started = threading.Barrier(2, timeout=5)
_appended = threading.Event()


@component(cache=False, executor="thread")
def numbers():
    return {"xs": [1, 2], "tag": "t"}


@component(executor="thread")
def appends(data):
    _both_started.wait()             # the two consumers hold their inputs at the same time
    data["xs"].append(99)
    _appended.set()
    return len(data["xs"])


@component(executor="thread")
def reads(data):
    _both_started.wait()
    _appended.wait(5)                # ... and the other has changed its own
    return list(data["xs"])


def test_a_consumer_changing_its_input_changes_nobody_elses(engine):
    @pipeline(name="own_copies", max_parallel=2)
    def p():
        d = numbers()
        return appends(data=d["outputs"]), reads(data=d["outputs"]), d

    _both_started.reset()
    _appended.clear()
    r = p.run(engine=engine)
    assert r.state.value == "SUCCESS", r.error
    appended, read, produced = r.value
    assert appended["outputs"]["result"] == 3
    assert read["outputs"]["result"] == [1, 2]
    assert produced["outputs"] == {"xs": [1, 2], "tag": "t"}       # the producer's result too


def test_declared_nodes_get_their_own_copies_and_memo_stays_right():
    def make(deps, params):
        return [1, 2]

    def mutate(deps, params):
        deps["a"].append(99)
        return len(deps["a"])

    def copy_of(deps, params):
        return list(deps["a"])

    store = MemoryStorage()
    out = []
    for dag_id, nodes in (("with_mutator", ["m", "r"]), ("without", ["r"])):
        s = DynamicScheduler(store, ExecutionConfig(max_concurrent_nodes=1),
                             metadata=MemoryMetadataStore())
        try:
            for name, fn in (("make", make), ("mutate", mutate), ("copy_of", copy_of)):
                s.executor.register_operation(name, fn)
            ops = {"m": "mutate", "r": "copy_of"}
            dag = DAGDefinition(dag_id, [NodeDefinition("a", "make", [], {})]
                                + [NodeDefinition(n, ops[n], ["a"], {}) for n in nodes])
            s.run(dag)
            out.append({k: v.result_data for k, v in s.node_results(dag_id).items()})
        finally:
            s.engine.close()
    assert out[0] == {"a": [1, 2], "m": 3, "r": [1, 2]}
    assert out[1] == {"a": [1, 2], "r": [1, 2]}        # the stored r was not poisoned


def test_own_copy_shares_what_cannot_change_and_copies_the_rest():
    frozen = np.arange(100_000, dtype=np.float64)
    frozen.flags.writeable = False
    box = {"big": frozen, "small": np.zeros(4), "xs": [1, [2]]}
    copied = own_copy(box)
    assert copied is not box and copied["xs"] is not box["xs"]
    assert copied["xs"][1] is not box["xs"][1]
    assert np.shares_memory(copied["big"], frozen)               # out of band, not copied
    assert not np.shares_memory(copied["small"], box["small"])   # writable: a copy
    assert own_copy(frozen) is frozen
    for v in (5, "s", (1, "a"), None, b"x", 2.5):
        assert own_copy(v) is v
    lock = threading.Lock()
    assert own_copy(lock) is lock                                 # cannot be copied: shared


class CodedError(Exception):
    """Pickles, but does not unpickle: unpickling calls ``CodedError(msg)``."""

    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code


def test_a_value_that_does_not_unpickle_is_shared_as_before():
    """``own_copy`` raised (the consumer failed; on a declared graph's fast path the run loop
    crashed): such a value is handed over as it is."""
    value = [CodedError("m", 3)]
    assert own_copy(value) is value


def test_a_declared_node_given_such_a_value_runs():
    def make(deps, params):
        return [CodedError("m", 3)]

    def use(deps, params):
        return deps["a"][0].code

    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(), metadata=MemoryMetadataStore())
    try:
        s.executor.register_operation("make_coded", make)
        s.executor.register_operation("use_coded", use)
        r = s.run(DAGDefinition("coded", [NodeDefinition("a", "make_coded", [], {}),
                                          NodeDefinition("b", "use_coded", ["a"], {})]))
        assert r.state.value == "SUCCESS", r.failures
        assert s.node_results("coded", ["b"])["b"].result_data == 3
    finally:
        s.engine.close()


def test_large_bytes_and_text_in_a_result_are_shared_not_copied():
    """A dict holding an image's bytes (or a long document) was pickled whole for every
    consumer: two copies of the blob each time. Immutable, they are shared now, wherever they
    sit; the rest is still a copy of its own, with what it shared still shared."""
    import tracemalloc

    image = b"\x89PNG" + bytes(20 << 20)
    doc = "word " * (1 << 18)
    value = {"image": image, "doc": doc, "meta": {"w": 2}, "deep": {"thumb": image}}
    value["twice"] = [value["meta"], value["meta"]]
    value["me"] = value
    tracemalloc.start()
    try:
        copied = own_copy(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20                                    # not the 40 MB of two copies
    assert copied["image"] is image and copied["doc"] is doc and copied["deep"]["thumb"] is image
    assert copied["meta"] == {"w": 2} and copied["meta"] is not value["meta"]
    assert copied["twice"][0] is copied["twice"][1] is copied["meta"]
    assert copied["me"] is copied
    copied["meta"]["w"] = 3
    assert value["meta"]["w"] == 2
