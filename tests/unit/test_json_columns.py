"""The metadata store's JSON-column encoders: the strict one, and the fast one used for task
inputs, which must store the same values and refuse the same ones."""
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twingraph.errors import ValidationError
from twingraph.stores.metadata._semantics import fast_json_encoder, json_encoder

strict, fast = json_encoder(), fast_json_encoder()

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)


@given(values)
def test_fast_encoder_stores_the_same_value(value):
    assert json.loads(fast(value)) == json.loads(strict(value))


def test_task_inputs_and_the_values_orjson_would_write_differently():
    inputs = {"code_version": "a" * 64, "config": "b" * 16,
              "deps": [["load-0", ["outputs", "chunks", 3]], ["größe-1", []]],
              "labels": {"team": "ü"}, "resources": {"cpu": 0.5, "gpu": True}}
    assert json.loads(fast(inputs)) == inputs
    assert fast({1: "int key"}) == strict({1: "int key"}) == '{"1":"int key"}'
    assert fast({"big": 2**80}) == strict({"big": 2**80})
    assert fast({"none": None}) == '{"none":null}'
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValidationError):
            fast({"resources": {"cpu": bad}})
    with pytest.raises(ValidationError):
        fast({"x": object()})
