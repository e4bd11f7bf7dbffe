"""An argument that holds itself (a list appended to itself, a dict that is its own value)
failed its task with ``RecursionError`` before it was keyed (session 22 review): the search
for futures in arguments and the key's digest recursed for ever. Such an argument is now
walked once per container and keyed by its pickle; one that also holds futures is refused
with a clear error. Real runs on the in-memory engine of ``conftest.py``."""
from __future__ import annotations

from twingraph import component, pipeline

CALLS: list[int] = []


@component
def size(x) -> int:
    CALLS.append(1)
    return len(x)


@component
def three() -> int:
    return 3


@pipeline(name="holds_itself")
def holds_itself(n: int):
    a: list = list(range(n))
    a.append(a)
    d: dict = {"k": 1}
    d["self"] = d
    return size(x=a), size(x=d), size(x=list(range(n)))


def test_an_argument_that_holds_itself_is_keyed_and_passed(engine):
    CALLS.clear()
    r = holds_itself.run(engine=engine, n=2)
    assert r.error is None, r.error
    assert [x["outputs"]["result"] for x in r.value] == [3, 2, 2]
    r = holds_itself.run(engine=engine, n=2)            # the same: memo hits
    assert [x["outputs"]["result"] for x in r.value] == [3, 2, 2]
    assert len(CALLS) == 3
    tasks = {t.node_id: t.cache_status for t in engine.metadata.get_tasks(r.run_id)}
    assert set(tasks.values()) == {"hit"}
    r = holds_itself.run(engine=engine, n=3)            # another value: another key
    assert [x["outputs"]["result"] for x in r.value] == [4, 2, 3]


@pipeline(name="holds_itself_and_a_future")
def holds_itself_and_a_future():
    a: list = [three()]
    a.append(a)
    return size(x=a)


def test_an_argument_that_holds_itself_and_a_future_is_refused_with_the_reason(engine):
    r = holds_itself_and_a_future.run(engine=engine)
    assert r.error is not None
    assert "holds itself" in str(r.error) and "RecursionError" not in str(r.error)


@component
def combine(n: int, graph) -> int:
    return n + len(graph)


@pipeline(name="future_apart_from_a_cycle")
def future_apart_from_a_cycle():
    g: list = [1, 2]
    g.append(g)
    return combine(n=three()["outputs"]["result"], graph=g)


def test_a_future_passed_apart_from_an_argument_that_holds_itself_is_accepted(engine):
    """The check counted the futures of the call's earlier arguments as the cyclic one's."""
    r = future_apart_from_a_cycle.run(engine=engine)
    assert r.error is None, r.error
    assert r.value["outputs"]["result"] == 6


def test_a_cyclic_argument_is_keyed_with_the_code_of_its_objects_classes(
        engine, tmp_path, monkeypatch):
    """Keyed by its pickle alone, a cyclic argument kept its key when the class of the
    objects in it was edited (a pickle names a class, not its code): the old result."""
    import importlib
    import sys
    monkeypatch.syspath_prepend(str(tmp_path))
    src = ("import dataclasses\n\n@dataclasses.dataclass(eq=False)\n"
           "class Node:\n    name: str\n    other: object = None\n\n"
           "    def label(self):\n        return 'v1-' + self.name\n")
    (tmp_path / "s22_cyc_nodes.py").write_text(src)
    importlib.invalidate_caches()
    nodes = importlib.import_module("s22_cyc_nodes")

    @component
    def labels_s22(pair) -> list:
        return [n.label() for n in pair[:2]]

    @pipeline(name="s22_cyclic_nodes")
    def p():
        a, b = nodes.Node("a"), nodes.Node("b")
        a.other, b.other = b, a
        pair: list = [a, b]
        pair.append(pair)                       # a list that holds itself, and two objects
        return labels_s22(pair=pair)

    try:
        r = p.run(engine=engine)
        assert r.error is None, r.error
        assert r.value["outputs"]["result"] == ["v1-a", "v1-b"]
        (tmp_path / "s22_cyc_nodes.py").write_text(src.replace("'v1-'", "'v2-'"))
        importlib.invalidate_caches()
        importlib.reload(nodes)
        r = p.run(engine=engine)
        assert r.error is None, r.error
        assert r.value["outputs"]["result"] == ["v2-a", "v2-b"]
    finally:
        sys.modules.pop("s22_cyc_nodes", None)
