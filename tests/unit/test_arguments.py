"""How a call's arguments are named for its memo key (``core.arguments``): pure functions."""
import inspect

import numpy as np

from twingraph.core.arguments import Parameters, parameters_of


def f(x, y=None, *, z="a", w=0.0):
    return x


def named(fn, *args, **kwargs):
    plan = parameters_of(fn)
    assert plan is not None
    return plan.named(args, kwargs)


def test_positional_and_keyword_spellings_are_one_call():
    expected = ((), {"x": 3})
    assert named(f, 3) == expected
    assert named(f, x=3) == expected
    assert named(f, 3, None) == expected
    assert named(f, 3, z="a") == expected
    assert named(f, 3, None, z="a", w=0.0) == expected


def test_a_value_other_than_the_default_stays():
    assert named(f, 3, 1) == ((), {"x": 3, "y": 1})
    assert named(f, 3, z="b") == ((), {"x": 3, "z": "b"})
    assert named(f, 3, w=-0.0) == ((), {"x": 3, "w": -0.0})   # another float, another digest
    assert named(f, 3, w=0) == ((), {"x": 3, "w": 0})         # an int is not the float default
    assert named(f, 3, y=False) == ((), {"x": 3, "y": False})


def test_defaults_are_compared_without_calling_anything_user_defined():
    arr = np.zeros(3)

    def g(a, b=arr, c=()):
        return a

    # The default object itself is left out; an equal array is not compared (== on arrays).
    assert named(g, 1, arr) == ((), {"a": 1})
    assert named(g, 1, np.zeros(3))[1].keys() == {"a", "b"}
    assert named(g, 1, c=()) == ((), {"a": 1})          # () is a singleton: the same object


def test_extra_positional_arguments_of_varargs_stay_positional():
    def h(a, *rest, **more):
        return a
    assert named(h, 1, 2, 3, k=4) == ((2, 3), {"a": 1, "k": 4})


def test_a_name_bound_twice_is_refused():
    # f(3, x=4) raises TypeError when it runs: it must not take the key of f(x=4), nor (with
    # *rest) the key of f(4, 3).
    import pytest
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        named(f, 3, x=4)

    def g(x, *rest):
        return x
    with pytest.raises(TypeError):
        named(g, 3, x=4)
    assert named(g, 4, 3) == ((3,), {"x": 4})


def test_positional_only_parameters_stay_positional():
    # f(3) binds x=3; f(x=3) puts x=3 into **kw: two computations, two digests.
    def h(x=0, /, **kw):
        return x, kw
    assert parameters_of(h) is None          # nothing to name: digested as given, apart

    def h2(x=0, /, y=1, **kw):
        return x, y, kw
    assert named(h2, 3) == ((3,), {}) and named(h2, x=3) == ((), {"x": 3})
    assert named(h2, x=0) == ((), {"x": 0})          # a **kw entry, not x's default
    assert named(h2, 0, 1) == ((0,), {})              # y's default left out

    def k(a, /, b, c=1):
        return a
    assert named(k, 1, 2) == named(k, 1, b=2) == named(k, 1, 2, 1) == ((1,), {"b": 2})
    assert named(k, 1, 2, 5) == ((1,), {"b": 2, "c": 5})


def test_execute_methods_skip_their_instance():
    class C:
        def execute(self, data, scale=1):
            return data
    plan = parameters_of(C.execute, skip_first=True)
    assert plan is not None and plan.named(([1],), {"scale": 1}) == ((), {"data": [1]})


def test_signatures_with_nothing_to_name_give_none():
    def only_kwargs(**kw):
        return kw
    assert Parameters.of(inspect.signature(only_kwargs)) is None
    assert parameters_of(object()) is None          # not callable: no signature, no error
