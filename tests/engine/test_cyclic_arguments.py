"""An argument that holds itself (a list appended to itself, a dict that is its own value)
failed its task with ``RecursionError`` before it was keyed (session 22 review): the search
for futures in arguments and the key's digest recursed for ever. Such an argument is now
walked once per container; where its key's digest meets a container or object it is inside
of, it names how many levels up that is (session 23: it was hashed by its pickle deep in the
stack, which failed on dates, decimals and rings of objects and took a minute for 100
objects). One that also holds futures is refused with a clear error. Real runs on the
in-memory engine of ``conftest.py``."""
from __future__ import annotations

import dataclasses
import datetime
import decimal
from collections import OrderedDict

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


@pipeline(name="cyclic_dates")
def cyclic_dates(day: int):
    a: list = [datetime.datetime(2020, 1, day), decimal.Decimal("1.5")]
    a.append(a)
    return size(x=a)


def test_a_cyclic_argument_holding_dates_and_decimals_is_keyed(engine):
    """Hashed by its pickle from deep in the stack, it failed: 'Could not pickle object as
    excessively deep recursion required'."""
    CALLS.clear()
    for day in (1, 1, 2):
        r = cyclic_dates.run(engine=engine, day=day)
        assert r.error is None, r.error
        assert r.value["outputs"]["result"] == 3
    assert len(CALLS) == 2                  # the second run of day 1 was a hit; day 2 is not


class Ring:
    def __init__(self, name: str) -> None:
        self.name = name
        self.next: Ring | None = None


@component
def names(nodes) -> list:
    CALLS.append(1)
    return [n.name for n in nodes[:-1]] + [nodes[0].next.name]


@pipeline(name="ring_of_objects")
def ring_of_objects(n: int, tag: str):
    nodes: list = [Ring(f"{tag}{i}") for i in range(n)]
    for i, node in enumerate(nodes):
        node.next = nodes[(i + 1) % n]
    nodes.append(nodes)
    return names(nodes=nodes)


def test_a_ring_of_objects_in_a_list_that_holds_itself_is_keyed_by_its_state(engine):
    """Each object was walked again at every level until the stack ran out, then pickled:
    100 objects took 65 s and failed."""
    CALLS.clear()
    r = ring_of_objects.run(engine=engine, n=100, tag="a")
    assert r.error is None, r.error
    assert r.value["outputs"]["result"][:2] == ["a0", "a1"] and len(r.value["outputs"]["result"]) == 101
    assert ring_of_objects.run(engine=engine, n=100, tag="a").error is None      # a hit
    r = ring_of_objects.run(engine=engine, n=100, tag="b")     # other state: another key
    assert r.value["outputs"]["result"][:2] == ["b0", "b1"]
    assert len(CALLS) == 2


@component
def shape(x) -> list:
    """Where the value points back at itself: what a key that ignored the shape would mix."""
    return [x[0] is x, type(x[0]) is list and x[0][0] is x, type(x[0]) is list and x[0][0] is x[0]]


@pipeline(name="cycle_shapes")
def cycle_shapes(kind: str):
    outer: list = []
    if kind == "self":
        outer.append(outer)                 # [outer]
    else:
        inner: list = []
        outer.append(inner)
        inner.append(outer if kind == "outer" else inner)
    return shape(x=outer)


def test_cycles_of_different_shapes_have_different_keys(engine):
    got = {}
    for kind in ("self", "outer", "inner", "outer"):
        r = cycle_shapes.run(engine=engine, kind=kind)
        assert r.error is None, r.error
        got[kind] = r.value["outputs"]["result"]
    assert got == {"self": [True, True, True], "outer": [False, True, False],
                   "inner": [False, False, True]}


@dataclasses.dataclass(eq=False)
class Tree:
    label: str
    children: list = dataclasses.field(default_factory=list)
    parent: "Tree | None" = None


@component
def labels_of(tree, index) -> list:
    CALLS.append(1)
    return [tree.label] + [c.label for c in tree.children] + [len(index)]


@pipeline(name="tree_with_parents")
def tree_with_parents(leaf: str):
    root = Tree("root")
    for name in ("a", leaf):
        root.children.append(Tree(name, parent=root))
    index: OrderedDict = OrderedDict(root=root)
    index["index"] = index                  # a mapping that holds itself
    return labels_of(tree=root, index=index)


def test_dataclasses_and_mappings_that_point_back_are_keyed_by_content(engine):
    CALLS.clear()
    for leaf, want in (("b", "b"), ("b", "b"), ("c", "c")):
        r = tree_with_parents.run(engine=engine, leaf=leaf)
        assert r.error is None, r.error
        assert r.value["outputs"]["result"] == ["root", "a", want, 2]
    assert len(CALLS) == 2


@component
def same_first_two(x) -> bool:
    return x[0] is x[1]


@pipeline(name="shared_or_not")
def shared_or_not(shared: bool):
    a: list = []
    a.append(a)
    b: list = []
    b.append(b)
    return same_first_two(x=[a, a] if shared else [a, b])


def test_which_objects_are_shared_is_part_of_the_key(engine):
    """Keyed by its shape seen from the root alone, ``[a, a]`` and ``[a, b]`` (two lists
    that each hold themselves) had one key: the second run was a hit and said True."""
    got = [shared_or_not.run(engine=engine, shared=s).value["outputs"]["result"]
           for s in (True, False, True)]
    assert got == [True, False, True]


def test_a_graph_of_objects_is_walked_once_per_object():
    """Walked along every simple path, a 5x5 grid of objects holding their neighbours took
    84 s to key; a complete graph of 30 never ended. Each object is walked once now (with
    pytest-timeout, a regression fails instead of hanging)."""
    from twingraph.core.hashing import digest_json, digest_value
    from twingraph.engine.engine import Engine
    nodes: list = [Ring(str(i)) for i in range(30)]
    for n in nodes:
        n.next = [m for m in nodes if m is not n]         # everyone knows everyone
    digest = digest_json(digest_value(nodes, None, str, Engine.hash_value))
    again = digest_json(digest_value(nodes, None, str, Engine.hash_value))
    assert digest == again
    nodes[7].name = "changed"
    assert digest_json(digest_value(nodes, None, str, Engine.hash_value)) != digest


SET_PROBE = """
import sys
sys.path.insert(0, {here!r})
from twingraph.core.hashing import digest_json, digest_value
from twingraph.engine.engine import Engine


class Item:
    def __init__(self, name, shared):
        self.name, self.shared = name, shared

    def __hash__(self):
        return hash(self.name)          # the set's order follows the hash seed


shared = [1, 2]
items = {{Item(f"i{{n}}", shared) for n in range(6)}}
print(digest_json(digest_value([items, shared], None, str, Engine.hash_value)).decode())
"""


def test_a_set_whose_items_share_an_object_digests_alike_under_every_hash_seed(tmp_path):
    """Each item of a set is digested as if it came first: whichever the set's order walked
    first would get the shared list's digest and the others a reference to it."""
    import os
    import subprocess
    import sys
    probe = tmp_path / "probe.py"
    probe.write_text(SET_PROBE.format(here=str(tmp_path)))
    out = {subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": str(seed)}, check=True).stdout
           for seed in range(1, 6)}
    assert len(out) == 1, out
