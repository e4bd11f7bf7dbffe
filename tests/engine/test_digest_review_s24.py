"""What a leaf hashed whole by its pickle holds is part of the call's walk (session 24): a
``deque`` holding a list the call passes again elsewhere, and one holding a copy of it, had
one key (decision 0005's list of gaps). Each fails without the fix."""
from __future__ import annotations

import copy
from collections import deque

from twingraph import component, pipeline
from twingraph.core.hashing import digest_json, digest_value
from twingraph.engine.engine import Engine
from twingraph.engine.refs import Ref


def _d(value) -> bytes:
    return digest_json(digest_value(value, Ref, str, Engine.hash_value))


def test_what_a_pickled_leaf_shares_with_the_rest_of_the_call_is_in_its_key():
    a = [1, 2]
    assert _d([deque([a]), a]) != _d([deque([a]), copy.copy(a)])     # met in the pickle first
    assert _d([a, deque([a])]) != _d([a, deque([copy.copy(a)])])     # met by the walk first
    assert _d([deque([a]), deque([a])]) != _d([deque([a]), deque([copy.copy(a)])])
    # nothing shared: the key is the pickle's, as before, and the same every time
    assert _d([deque([1, "x"]), 2]) == _d([deque([1, "x"]), 2])
    assert _d([deque([[1]]), [1]]) == _d([deque([[1]]), [1]])
    # equal strings or numbers are values, not places: which object a pickle holds is no part
    s1, s2 = "a long enough string " * 4, "".join(["a long enough string "] * 4)
    assert s1 == s2 and s1 is not s2
    assert _d([deque([s1]), s1]) == _d([deque([s1]), s2])


@component(cache=True)
def grows_through_the_deque(box, plain) -> int:
    box[0].append(9)                  # changes ``plain`` too when it is the same list
    return len(plain)


@pipeline(name="pickled_leaf_sharing_s24")
def shares(shared: bool):
    a = [1, 2]
    return grows_through_the_deque(box=deque([a]), plain=a if shared else copy.copy(a))


def test_a_call_whose_pickled_argument_shares_a_list_is_not_a_hit_of_one_that_does_not(engine):
    got = [shares.run(engine=engine, shared=s).value["outputs"]["result"] for s in (False, True)]
    assert got == [2, 3]
