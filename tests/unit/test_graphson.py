"""The GraphSON 3.0 adjacency-list writer (twingraph.graphson), on hand-built graphs."""
import json
import os
from datetime import datetime, timezone

import pytest

from twingraph.core.records import EdgeRecord
from twingraph.graphson import graphson_lines, typed, write_graphson
from twingraph.lineage import Vertex


def _i32(v):
    return {"@type": "g:Int32", "@value": v}


def _i64(v):
    return {"@type": "g:Int64", "@value": v}


def _dbl(v):
    return {"@type": "g:Double", "@value": v}


def test_marko_line_has_the_shape_tinkerpop_writes():
    """TinkerPop's "modern" toy graph, vertex 1 (marko), as GraphSONWriter writes it in the
    adjacency-list format: typed ids, edges grouped by label under ``outE`` with ``inV`` and
    plain typed edge properties, vertex properties as lists of {id, value}."""
    vertices = [Vertex(1, "person", {"name": "marko", "age": 29}), Vertex(2, "person"),
                Vertex(3, "software"), Vertex(4, "person")]
    edges = [EdgeRecord("r", 1, 3, "created", {"weight": 0.4}),
             EdgeRecord("r", 1, 2, "knows", {"weight": 0.5}),
             EdgeRecord("r", 1, 4, "knows", {"weight": 1.0})]
    lines = graphson_lines(vertices, edges)
    # Edge ids are assigned by the writer; the documented sample numbers them 9, 7, 8.
    marko = json.loads(lines[0])
    ids = {e["inV"]["@value"]: e["id"] for es in marko["outE"].values() for e in es}
    assert marko == {
        "id": _i32(1), "label": "person",
        "outE": {"created": [{"id": ids[3], "inV": _i32(3), "properties": {"weight": _dbl(0.4)}}],
                 "knows": [{"id": ids[2], "inV": _i32(2), "properties": {"weight": _dbl(0.5)}},
                           {"id": ids[4], "inV": _i32(4), "properties": {"weight": _dbl(1.0)}}]},
        "properties": {"name": [{"id": _i64(0), "value": "marko"}],
                       "age": [{"id": _i64(1), "value": _i32(29)}]}}
    software = json.loads(lines[2])        # the other end: the same edge under inE, with outV
    assert software["inE"] == {"created": [{"id": ids[3], "outV": _i32(1),
                                            "properties": {"weight": _dbl(0.4)}}]}
    assert "outE" not in software and software["properties"] == {}


def test_values_are_typed_the_graphson_3_way():
    assert typed("s") == "s" and typed(True) is True
    assert typed(7) == _i32(7) and typed(2 ** 40) == _i64(2 ** 40) and typed(2 ** 70) == str(2 ** 70)
    assert typed(1.5) == _dbl(1.5) and typed(float("nan")) == _dbl("NaN")
    assert typed(datetime(2024, 1, 2, tzinfo=timezone.utc)) == \
        {"@type": "g:Date", "@value": 1704153600000}
    assert typed({"b": [1, 2], "a": None}) == '{"a": null, "b": [1, 2]}'   # json text


def test_dangling_edges_and_none_values_are_left_out():
    """TinkerGraph's reader rejects a file with an edge to an unknown vertex, and null values."""
    lines = graphson_lines([Vertex("a", "Component", {"hash": None, "name": "a"})],
                           [EdgeRecord("r", "a", "ghost", "DEPENDS_ON"),
                            EdgeRecord("r", "a", "a", "DEPENDS_ON", {"data_flow": ["outputs", "x"]})])
    (a,) = [json.loads(x) for x in lines]
    assert set(a["properties"]) == {"name"}
    assert a["outE"] == {"DEPENDS_ON": [{"id": "e0", "inV": "a",
                                         "properties": {"data_flow": '["outputs", "x"]'}}]}
    assert a["inE"]["DEPENDS_ON"][0]["outV"] == "a"


def test_write_is_atomic_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "deep" / "g.json"
    write_graphson(target, ['{"id":"old"}'])
    with pytest.raises(TypeError):
        write_graphson(target, ['{"id":"new"}', 42])          # fails halfway through
    assert target.read_text() == '{"id":"old"}\n'
    assert os.listdir(target.parent) == ["g.json"]             # no temporary file left behind


def test_a_store_time_becomes_the_g_date_of_its_rounded_millisecond():
    """A task's start time (epoch seconds, a float in the store) is exported as
    ``round(t * 1000)`` ms. Through ``datetime.fromtimestamp`` (microseconds first) about one
    time in 2,500 came out a millisecond off; these seeds include such times."""
    import random

    from twingraph.graphson import date_of
    rng = random.Random(12)
    times = [1796447165 + rng.random() for _ in range(20_000)] + [0.0, 1.0005, 1796447165.6805]
    off = [t for t in times
           if round(datetime.fromtimestamp(t, tz=timezone.utc).timestamp() * 1000)
           != round(t * 1000)]
    assert off, "the seed should include times the old conversion got wrong"
    for t in times:
        assert typed(date_of(t)) == {"@type": "g:Date", "@value": round(t * 1000)}
