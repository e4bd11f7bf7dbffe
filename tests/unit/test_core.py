"""Pure core: states, retry math, graph checks, structural keys, code versions."""
import random

import pytest
from hypothesis import given, strategies as st

from twingraph.core.codeversion import code_version
from twingraph.core.graph import cycle_nodes, validate_dag
from twingraph.core.hashing import digest_kwargs, digest_value, structural_key
from twingraph.core.retry import RetryPolicy
from twingraph.core.states import RunState, TaskState, transition_run, transition_task
from twingraph.errors import GraphValidationError, InvalidTransition, TaskTimeout, ValidationError


def test_run_transitions():
    assert transition_run(RunState.PENDING, RunState.RUNNING) is RunState.RUNNING
    assert transition_run(RunState.FAILED, RunState.RUNNING) is RunState.RUNNING   # resume
    with pytest.raises(InvalidTransition):
        transition_run(RunState.SUCCESS, RunState.RUNNING)
    with pytest.raises(InvalidTransition):
        transition_run(RunState.PENDING, RunState.SUCCESS)


def test_task_transitions():
    assert transition_task(TaskState.RUNNING, TaskState.RETRYING) is TaskState.RETRYING
    with pytest.raises(InvalidTransition):
        transition_task(TaskState.SUCCESS, TaskState.FAILED)
    with pytest.raises(InvalidTransition):
        transition_task(TaskState.PENDING, TaskState.RUNNING)   # must be queued first


def test_exponential_backoff_without_jitter():
    p = RetryPolicy.parse({"max_attempts": 5, "backoff": "exponential", "initial_delay": 1,
                           "max_delay": 5, "jitter": False})
    assert [p.delay(a) for a in (1, 2, 3, 4)] == [1, 2, 4, 5]


def test_fixed_backoff_and_jitter_bounds():
    p = RetryPolicy.parse({"max_attempts": 3, "backoff": "fixed", "initial_delay": 2,
                           "max_delay": 10, "jitter": 0.5})
    rng = random.Random(7)
    delays = [p.delay(1, rng) for _ in range(200)]
    assert all(1.0 <= d <= 3.0 for d in delays) and len(set(delays)) > 100


def test_retry_matches_class_names_through_the_mro():
    p = RetryPolicy.parse({"max_attempts": 3, "exceptions": ["TimeoutError"]})
    assert p.retries(TaskTimeout("n", 1.0, killed=True), 1)
    assert not p.retries(ValueError(), 1)
    assert not p.retries(TimeoutError(), 3)     # attempts exhausted


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"initial_delay": -1},
                                 {"initial_delay": 10, "max_delay": 1}, {"exceptions": [3]}, "3",
                                 {"exceptions": 5}, {"exceptions": None}, {"exceptions": {"ValueError"}}])
def test_bad_retry_policies(bad):
    with pytest.raises(ValidationError):
        RetryPolicy.parse(bad)


def test_a_first_delay_above_the_default_cap_raises_the_cap():
    # {'initial_delay': 120} was refused: "max_delay must be >= initial_delay", about the
    # default max_delay (60) the user never set
    p = RetryPolicy.parse({"max_attempts": 3, "initial_delay": 120, "jitter": 0})
    assert p.max_delay == 120 and p.delay(1) == 120 and p.delay(2) == 120
    assert RetryPolicy.parse({"max_attempts": 3, "initial_delay": 5}).max_delay == 60
    with pytest.raises(ValidationError, match="max_delay must be >= initial_delay"):
        RetryPolicy.parse({"max_attempts": 3, "initial_delay": 120, "max_delay": 60})


@pytest.mark.parametrize("name, bad", [
    ("initial_delay", {"initial_delay": float("nan")}),
    ("initial_delay", {"initial_delay": float("inf"), "max_delay": float("inf")}),
    ("max_delay", {"max_delay": float("nan")}),
    ("max_delay", {"max_delay": float("inf")}),
    ("multiplier", {"multiplier": float("nan")}),
    ("multiplier", {"multiplier": float("inf")}),
    ("jitter", {"jitter": float("nan")}),
    ("jitter", {"jitter": float("-inf")}),
])
def test_retry_delays_must_be_finite_numbers(name, bad):
    # NaN passed ``v < 0`` (every comparison with it is False): a task then waited forever
    with pytest.raises(ValidationError, match=rf"retry_policy\.{name} must be a finite number >= 0"):
        RetryPolicy.parse({"max_attempts": 2, **bad})
    assert RetryPolicy.parse({"max_attempts": 2, "initial_delay": 0, "max_delay": 0,
                              "multiplier": 1, "jitter": 0}).delay(1) == 0


@pytest.mark.parametrize("bad, match", [
    ({"initial_delay": True}, "initial_delay must be a finite number"),
    ({"max_delay": True}, "max_delay must be a finite number"),
    ({"multiplier": True}, "multiplier must be a finite number"),
    ({"multiplier": 0}, "multiplier must be >= 1"),
    ({"jitter": 5}, "jitter must be a fraction from 0 to 1"),
])
def test_retry_numbers_are_numbers_in_range(bad, match):
    # True passed as 1; multiplier 0 made every delay after the first 0; jitter 5 gave
    # delays of 0.0-4.7 s for a fixed 1 s
    with pytest.raises(ValidationError, match=match):
        RetryPolicy.parse({"max_attempts": 3, **bad})


def test_a_cap_below_the_default_first_delay_lowers_that_delay():
    # {'max_delay': 0.5} alone was refused: "max_delay must be >= initial_delay" (the 1 s
    # default the user never set)
    p = RetryPolicy.parse({"max_attempts": 3, "max_delay": 0.5, "jitter": 0})
    assert p.initial_delay == 0.5 and p.delay(1) == 0.5 and p.delay(2) == 0.5


def test_validate_dag_orders_and_names_problems():
    order = validate_dag({"a": [], "b": ["a"], "c": ["a", "b"]})
    assert order.index("a") < order.index("b") < order.index("c")
    with pytest.raises(GraphValidationError) as e:
        validate_dag({"a": [], "b": ["zz", "a", "yy", "zz"], "c": ["a"]})
    assert e.value.nodes == ["b"]                      # node ids, as for the other reasons
    assert e.value.why == {"b": "needs yy, zz"}
    assert "dangling references: b (needs yy, zz)" in str(e.value)
    with pytest.raises(GraphValidationError) as e:
        validate_dag({"a": [], "b": []}, {"a": "load", "b": "nope"}, {"load"})
    assert e.value.nodes == ["b"] and e.value.why == {"b": "operation 'nope'"}
    with pytest.raises(GraphValidationError) as e:
        validate_dag({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"], "e": ["d"]})
    assert e.value.reason == "cycle" and e.value.nodes == ["b", "c", "d"]   # not 'e'


def test_topological_order_keeps_a_valid_given_order_and_sorts_any_other():
    written = {"a": [], "b": ["a"], "x": [], "c": ["b", "x"]}
    assert validate_dag(written) == ["a", "b", "x", "c"]        # already an order: kept as written
    shuffled = {"c": ["b", "x"], "b": ["a"], "x": [], "a": []}
    order = validate_dag(shuffled)
    assert sorted(order) == ["a", "b", "c", "x"]
    for n, ds in shuffled.items():
        assert all(order.index(d) < order.index(n) for d in ds)
    with pytest.raises(GraphValidationError) as e:                # a self-loop is not an order
        validate_dag({"a": [], "b": ["b"]})
    assert e.value.nodes == ["b"]


def test_cycle_detection_is_iterative_on_long_chains():
    n = 200_000
    deps = {str(i): [str(i - 1)] if i else [str(n - 1)] for i in range(n)}
    assert len(cycle_nodes(deps)) == n
    deps["0"] = []
    assert len(validate_dag(deps)) == n


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=6))
def test_keyword_digest_ignores_their_order(d):
    rev = dict(reversed(list(d.items())))
    key = lambda v: structural_key("c", "v1", {}, digest_kwargs(v, None, str, lambda x: "h"))  # noqa: E731
    assert key(d) == key(rev)


@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=2, max_size=6))
def test_a_dict_values_order_is_part_of_its_digest(d):
    """A dict passed as a value is iterated by the code that takes it: another order may give
    another result, so it is another key (stored dict results keep their order too)."""
    rev = dict(reversed(list(d.items())))
    key = lambda v: structural_key("c", "v1", {}, digest_value(v, None, str, lambda x: "h"))  # noqa: E731
    assert key(d) != key(rev)
    assert key(d) == key(dict(d))


def test_structural_key_changes_with_each_part():
    base = structural_key("c", "v1", {"a": 1}, {"x": 1})
    assert structural_key("c", "v2", {"a": 1}, {"x": 1}) != base
    assert structural_key("c", "v1", {"a": 2}, {"x": 1}) != base
    assert structural_key("c", "v1", {"a": 1}, {"x": 2}) != base
    assert structural_key("d", "v1", {"a": 1}, {"x": 1}) != base
    assert digest_value(1.0, None, str, str) != digest_value(1, None, str, str)


class _Fut:
    """Stands for a reference to another task's output (the engine's Ref)."""
    def __init__(self, name):
        self.name = name

    def __hash__(self):
        return hash(self.name)


def _digest(v):
    return digest_value(v, _Fut, lambda r: f"@{r.name}()", lambda x: "leaf")


def test_sets_digest_item_by_item_and_dicts_with_other_keys_pair_by_pair():
    # A dict with other keys: its keys and values' digests in order, alternating (it was the
    # whole value's hash, its pickle: user functions and classes named without their code, a
    # set's bytes in each process's order). A set: its items' digests in sorted order, with or
    # without references (hashed whole, its bytes followed its iteration order, which depends
    # on the hash seed: a new key in every process).
    assert _digest({1: "a"}) == {"kd": [1, "a"]} != _digest({"1": "a"})
    assert _digest({1: {"b", "a"}}) == {"kd": [1, {"s": ["a", "b"]}]}
    assert _digest({2, 1}) == {"s": [1, 2]} and _digest(frozenset({"b", "a"})) == {"fs": ["a", "b"]}
    # a reference cannot be hashed whole (its value does not exist yet): items are digested,
    # a set's in an order that does not depend on its own order, a dict's in its order (the
    # order is part of a dict's value, as in the leaf hash of one without references)
    a, b = _Fut("a"), _Fut("b")
    assert _digest({a, b}) == {"s": ["@a()", "@b()"]} == _digest({b, a})
    assert _digest(frozenset([b, 3])) == {"fs": ["@b()", 3]}
    assert _digest({2: b, 1: a}) == {"kd": [2, "@b()", 1, "@a()"]} != _digest({1: a, 2: b})
    assert _digest({1: [a]}) != _digest({1: [b]})
    assert _digest({(1, a)}) == {"s": [{"t": [1, "@a()"]}]}


def _helper(x):
    return x + 1


def _uses_helper(x):
    return _helper(x)


def test_code_version_follows_called_user_code():
    v1 = code_version(_uses_helper)
    global _helper
    old = _helper

    def _helper(x):  # noqa: F811 - a changed helper must change the caller's version
        return x + 2
    try:
        assert code_version(_uses_helper) != v1
    finally:
        _helper = old
    assert code_version(_uses_helper) == v1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -1, True, "10"])
def test_component_timeouts_must_be_finite_positive_numbers(bad):
    from twingraph.core.specs import ComponentSpec, PipelineSpec
    with pytest.raises(ValidationError, match="timeout"):
        ComponentSpec.build(name="c", qualname="m:c", code_version="v", timeout=bad)
    with pytest.raises(ValidationError, match="timeout"):
        PipelineSpec.build(name="p", timeout=bad)
    with pytest.raises(ValidationError, match="timeout"):
        ComponentSpec.build(name="c", qualname="m:c", code_version="v", config={"timeout": bad})


def test_config_timeout_bounds_the_task_like_the_documented_example():
    from twingraph.core.specs import ComponentSpec
    spec = ComponentSpec.build(name="c", qualname="m:c", code_version="v",
                               config={"memory": "2G", "timeout": 12})
    assert spec.timeout == 12.0
    both = ComponentSpec.build(name="c", qualname="m:c", code_version="v", timeout=5,
                               config={"timeout": 900})
    assert both.timeout == 5.0          # the smaller of the two


def test_retry_max_attempts_is_a_real_integer():
    from twingraph.core.retry import RetryPolicy
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy.parse({"max_attempts": True})


_any_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
              st.floats(), st.text(), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4),
                            st.dictionaries(st.integers(), inner, max_size=2)),
    max_leaves=16)


@given(_any_value)
def test_digest_json_is_canonical_json_byte_for_byte(value):
    # memo keys must not depend on which encoder wrote the digest
    from twingraph.core.hashing import canonical_json, digest_json
    d = digest_value(value, None, str, lambda x: "h")
    try:
        expected = canonical_json(d)
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        with pytest.raises(type(exc)):
            digest_json(d)
        return
    assert digest_json(d) == expected


def test_fencing_tokens_of_a_later_driver_are_above_any_of_an_earlier_one():
    from twingraph.core.retry import MAX_ATTEMPTS
    from twingraph.core.states import fence, fence_epoch
    assert fence(0, MAX_ATTEMPTS) < fence(1, 1) < fence(1, MAX_ATTEMPTS) < fence(2, 1)
    assert fence_epoch(fence(3, MAX_ATTEMPTS)) == 3
    assert fence(214_747, MAX_ATTEMPTS) < 2**31          # PostgreSQL's integer column
    RetryPolicy.parse({"max_attempts": MAX_ATTEMPTS})
    with pytest.raises(ValidationError, match="from 1 to 9999"):
        RetryPolicy.parse({"max_attempts": MAX_ATTEMPTS + 1})


def test_a_late_exponential_attempt_waits_max_delay_instead_of_overflowing():
    p = RetryPolicy.parse({"max_attempts": 5000, "backoff": "exponential", "initial_delay": 1,
                           "max_delay": 30, "jitter": False})
    assert p.delay(1025) == 30 and p.delay(4999) == 30


def test_bytes_like_inputs_of_different_types_do_not_share_a_key():
    # bytes, bytearray and memoryview encode alike; a component may tell them apart
    # (``type(x).__name__``): under one key a later call got the other's result
    from twingraph.engine.engine import Engine
    keys = {Engine.hash_value(v) for v in (b"ab", bytearray(b"ab"), memoryview(b"ab"))}
    assert len(keys) == 3
    assert Engine.hash_value(b"ab") == Engine.hash_value(bytes(bytearray(b"ab")))


def test_a_config_that_is_not_json_is_keyed_by_content():
    # Keyed by its repr: a large NumPy array's repr elides its middle, so a changed element
    # reused the stale result; a set's repr follows the hash seed; an object's, its address.
    import numpy as np
    from twingraph.core.hashing import key_prefix
    from twingraph.engine.engine import Engine
    a = np.arange(2000)
    b = a.copy()
    b[1000] = 5
    assert repr(a) == repr(b)
    ka = key_prefix("c", "v", {"w": a}, Engine.hash_value)
    assert ka != key_prefix("c", "v", {"w": b}, Engine.hash_value)
    assert ka == key_prefix("c", "v", {"w": a.copy()}, Engine.hash_value)
    assert key_prefix("c", "v", {"cols": {"x", "y", "z"}}, Engine.hash_value) == \
        key_prefix("c", "v", {"cols": {"z", "y", "x"}}, Engine.hash_value)
    # a JSON config keeps the key it had
    assert key_prefix("c", "v", {"n": 1, "s": "x"}, Engine.hash_value) == \
        key_prefix("c", "v", {"s": "x", "n": 1})


def test_enum_members_and_dataclass_instances_digest_by_class_and_value():
    # Hashed whole they were pickled: a class from a file loaded by value (a pipeline file)
    # pickles with an id of its own in every process, so such an argument missed every time.
    import dataclasses
    import enum

    class Mode(enum.Enum):
        FAST = 1
        SLOW = 2

    @dataclasses.dataclass
    class Params:
        rate: float
        tags: list

    assert _digest(Mode.FAST) == {"en": f"{Mode.__module__}.{Mode.__qualname__}", "c": "leaf",
                                  "v": 1}      # "c": its class, by leaf (its code: the engine)
    assert _digest(Mode.FAST) != _digest(Mode.SLOW)
    d = _digest(Params(0.5, ["a"]))
    assert d["s"] == {"o": ["rate", {"f": "0.5"}, "tags", {"l": ["a"]}]}
    assert d != _digest(Params(0.5, ["b"]))


def test_dangling_references_and_unknown_operations_are_named_together():
    """A DAG with both named only the dangling nodes; fixed, the next run named the rest."""
    from twingraph.core.graph import validate_dag
    from twingraph.errors import GraphValidationError
    with pytest.raises(GraphValidationError) as e:
        validate_dag({"a": [], "b": ["zz"]}, {"a": "nope", "b": "ok"}, {"ok"})
    assert e.value.nodes == ["a", "b"]
    assert e.value.reason == "dangling references and unknown operations"
    assert "a (operation 'nope')" in str(e.value) and "b (needs zz)" in str(e.value)
