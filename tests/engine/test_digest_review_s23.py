"""Wrong memo hits a review found in argument digests (session 23, third round): values a
component can tell apart that had one key. Each fails without its fix. Digests are compared
directly where that is enough; the rest are real runs on the in-memory engine of
``conftest.py``."""
from __future__ import annotations

import dataclasses
import threading
from typing import NamedTuple

from twingraph import component, pipeline
from twingraph.core import hashing
from twingraph.core.hashing import digest_json, digest_value
from twingraph.engine.engine import Engine
from twingraph.engine.refs import Ref


def _d(value) -> bytes:
    return digest_json(digest_value(value, Ref, str, Engine.hash_value))


@dataclasses.dataclass
class Base:
    pass


@dataclasses.dataclass(slots=True)
class Point(Base):
    x: int
    y: int


def test_a_slots_dataclass_over_a_base_without_slots_is_keyed_by_its_fields():
    """Its ``__dict__`` (the base's) is empty: every Point had one key."""
    assert _d(Point(1, 2)) != _d(Point(1, 3))
    assert _d(Point(1, 2)) == _d(Point(1, 2))


@component(cache=True)
def same_object(x, y) -> bool:
    return x is y


@pipeline(name="one_object_in_two_arguments_s23")
def two_arguments(shared: bool):
    a = [1]
    return same_object(x=a, y=a if shared else [1])


def test_an_object_passed_in_two_arguments_is_one_object_in_the_key(engine):
    """Each argument was a walk of its own: ``f(a, a)`` and ``f(a, [1])`` had one key."""
    got = [two_arguments.run(engine=engine, shared=s).value["outputs"]["result"]
           for s in (True, False)]
    assert got == [True, False]


class Pair(NamedTuple):
    left: list
    right: list


class Box:
    def __init__(self, content: list) -> None:
        self.content = content


def test_a_named_tuple_and_a_set_keep_what_their_items_share():
    a = [1]
    assert _d(Pair(a, a)) != _d(Pair(a, [1]))
    shared = [1, 2]
    assert _d({Box(shared), Box(shared)}) != _d({Box(shared), Box([1, 2])})
    assert _d([{Box(shared)}, shared]) != _d([{Box(shared)}, [1, 2]])


class Locked:
    """Its state does not digest (a lock): hashed by its pickle, which leaves out its cache."""

    def __init__(self, cache) -> None:
        self.cache, self.lock = cache, threading.Lock()

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.cache, self.lock = None, threading.Lock()


def test_objects_met_inside_an_object_hashed_by_its_pickle_are_not_referred_to():
    """They stayed numbered in the walk, so a later reference named an object the digest
    does not hold: ``[u, [A, u.cache]]`` and ``[u2, inner]`` with ``inner = [A, inner]``
    digested alike."""
    shared_a = [7]
    u1 = Locked([1])
    first = [u1, [shared_a, u1.cache]]
    inner: list = [shared_a]
    inner.append(inner)
    second = [Locked(5), inner]
    assert _d(first) != _d(second)


def test_a_walk_cut_short_leaves_nothing_for_the_next():
    """An interrupt between a container's registration and its walk left it registered:
    every later digest of it on the thread was a reference, whatever it held."""
    stale = [1, 2]
    w = hashing._WALK
    w.index[id(stale)] = 0
    w.objs.append(stale)                      # as an interrupted walk would leave it
    assert w.depth == 0
    assert _d(stale) == b'{"l":[1,2]}'
    stale.append(3)
    assert _d(stale) == b'{"l":[1,2,3]}'


def test_nested_dicts_with_keys_that_are_not_strings_are_walked_once():
    """Such a dict was walked as a string-keyed one up to its first other key, then again
    as pairs, at every level: 2^depth (with pytest-timeout, a regression fails)."""
    value: dict = {"leaf": 1, 0: 0}
    for _ in range(60):
        value = {"a": value, 0: 0}
    assert _d(value) == _d(value)
    assert _d({"a": [1], 0: 0}) == b'{"kd":["a",{"l":[1]},0,0]}'


@component(cache=True)
def innermost(x) -> int:
    while isinstance(x, list):
        x = x[0]
    return x


@pipeline(name="too_deep_to_walk_s23")
def too_deep(v: int):
    x: list = [v]
    for _ in range(600):
        x = [x]
    return innermost(x=x)


def test_an_argument_too_deep_to_walk_is_keyed_by_its_content(engine):
    """The call's walk, cut short by RecursionError, stayed open: the fallback found the
    argument already numbered and keyed it as a reference, whatever it held (a hit)."""
    got = [too_deep.run(engine=engine, v=v).value["outputs"]["result"] for v in (1, 2)]
    assert got == [1, 2]


@component(cache=True)
def first_two_same(x, y) -> bool:
    return y[0] is y[1]


@pipeline(name="keyword_order_s23")
def keyword_order(shared: bool):
    if shared:
        q = [1]
        return first_two_same(y=[q, q], x=[[1]])
    p = [1]
    return first_two_same(x=[p], y=[[1], p])


def test_the_order_keywords_are_written_in_does_not_mix_two_calls(engine):
    """Objects were numbered in the order the call wrote its keywords, which the digest does
    not keep: these two calls had one key."""
    got = [keyword_order.run(engine=engine, shared=s).value["outputs"]["result"]
           for s in (False, True)]
    assert got == [False, True]


def test_sets_and_mutable_leaves_met_twice_are_one_object():
    s = {1, 2}
    assert _d([s, s]) != _d([s, set(s)])
    b = bytearray(b"ab")
    assert _d([b, b]) != _d([b, bytearray(b"ab")])
    d = b"ab" * 40
    assert _d([d, d]) == _d([d, bytes(d)])        # immutable: equal is the same value


@component(cache=True)
def same_with_deep(deep, x, y) -> bool:
    return x is y


@pipeline(name="deep_and_shared_s23")
def deep_and_shared(shared: bool):
    deep: list = [1]
    for _ in range(600):
        deep = [deep]
    a = [1]
    return same_with_deep(deep=deep, x=a, y=a if shared else [1])


def test_an_argument_too_deep_to_walk_leaves_the_others_one_walk(engine):
    """The fallback keyed each argument on its own: ``f(deep, a, a)`` and ``f(deep, a, [1])``
    had one key."""
    got = [deep_and_shared.run(engine=engine, shared=s).value["outputs"]["result"]
           for s in (True, False)]
    assert got == [True, False]


def test_a_memoryview_met_twice_is_one_object():
    m = memoryview(bytearray(b"ab"))
    assert _d([m, m]) != _d([m, memoryview(bytearray(b"ab"))])


from twingraph.dsl.base import BaseComponent  # noqa: E402


class Holds(BaseComponent):
    def __init__(self, v) -> None:
        super().__init__()
        self.v = v

    def execute(self, x):
        return [type(self.v).__name__, list(self.v) if isinstance(self.v, dict) else None]


@pipeline(name="class_attribute_kinds_s23")
def attribute_kinds(case: int):
    values = [{"a": 1, "b": 2}, {"b": 2, "a": 1}, {1, 2}, frozenset({1, 2}), b"ab",
              bytearray(b"ab")]
    return Holds(values[case])(x=0)


def test_a_class_components_attributes_keep_their_kind_and_order(engine):
    """Keyed through a JSON form, a dict's order, set from frozenset and bytes from bytearray
    were lost: each second case was a hit with the first one's result."""
    got = [attribute_kinds.run(engine=engine, case=c).value["outputs"]["result"]
           for c in range(6)]
    assert got == [["dict", ["a", "b"]], ["dict", ["b", "a"]], ["set", None],
                   ["frozenset", None], ["bytes", None], ["bytearray", None]]


@component(cache=True)
def same_deep(x, y) -> bool:
    return x is y


@pipeline(name="deep_twice_s23")
def deep_twice(shared: bool):
    deep: list = [1]
    for _ in range(600):
        deep = [deep]
    other: list = [1]
    for _ in range(600):
        other = [other]
    return same_deep(x=deep, y=deep if shared else other)


def test_an_argument_too_deep_to_walk_met_twice_is_one_object(engine):
    """Hashed by its pickle outside the call's walk, it was not numbered in it:
    ``f(deep, deep)`` and ``f(deep, equal_copy)`` had one key."""
    got = [deep_twice.run(engine=engine, shared=s).value["outputs"]["result"]
           for s in (True, False)]
    assert got == [True, False]


class DeepAttribute(BaseComponent):
    def __init__(self, v: int) -> None:
        super().__init__()
        nested: list = [v]
        for _ in range(700):
            nested = [nested]
        self.nested = nested

    def execute(self, x):
        value = self.nested
        while isinstance(value, list):
            value = value[0]
        return value


@pipeline(name="deep_attribute_s23")
def deep_attribute(v: int):
    return DeepAttribute(v)(x=0)


def test_a_class_components_attribute_too_deep_to_walk_is_keyed_by_its_pickle(engine):
    """Its walk's RecursionError fell back to a form cut at depth 32: one key for both."""
    got = [deep_attribute.run(engine=engine, v=v).value["outputs"]["result"] for v in (1, 2)]
    assert got == [1, 2]
