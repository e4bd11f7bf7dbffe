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


# -- session 14: export_run streams a run's graph instead of building it in memory ----------
def _seeded_run(tmp_path, n, *, run_id="big"):
    """A finished run of ``n`` tasks written straight to a SQLite metadata store: a chain
    (each task reads its predecessor), every 10th task also reading task 0 twice (two output
    paths: one edge with ``data_flows``), one task reading a producer that is not a task of
    the run (left out), and one edge recorded as a row."""
    from twingraph.core.records import RunRecord, TaskRecord
    from twingraph.core.states import RunState, TaskState
    from twingraph.stores.metadata import SQLMetadataStore
    md = SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", create=True)
    md.write([RunRecord(run_id, "big", RunState.SUCCESS, created_at=1.0, pipeline_version=3)])
    batch = []
    for i in range(n):
        deps = [[f"t{i - 1}", ["outputs", "x"]]] if i else []
        if i and i % 10 == 0:
            deps += [["t0", ["outputs", "a"]], ["t0", ["hash"]]]
        if i == 5:
            deps.append(["ghost", []])
        batch.append(TaskRecord(run_id, f"t{i}", "comp", TaskState.SUCCESS, cache_key="k" * 64,
                                cache_status="miss", order=i,
                                inputs={"code_version": "abc", **({"deps": deps} if deps else {}),
                                        **({"labels": {"team": "ü"}} if i == 3 else {})},
                                started_at=1e9 + i, ended_at=1e9 + i + 0.25))
    md.write(batch)
    md.write([EdgeRecord(run_id, "t2", "t1", "DEPENDS_ON", {"data_flow": "explicit"})])
    return md


def _graph_of(lines):
    """The graph a reader builds from the file, edge ids aside (they are the writer's to
    choose), after checking that every edge is written alike at both ends and ids are unique."""
    verts, outs, ins = {}, [], []
    for line in lines:
        v = json.loads(line)
        vid = json.dumps(v["id"])
        assert vid not in verts
        verts[vid] = (v["label"], {k: [p["value"] for p in ps] for k, ps in v["properties"].items()})
        for label, es in v.get("outE", {}).items():
            outs += [(e["id"], vid, label, json.dumps(e["inV"]), json.dumps(e["properties"])) for e in es]
        for label, es in v.get("inE", {}).items():
            ins += [(e["id"], json.dumps(e["outV"]), label, vid, json.dumps(e["properties"])) for e in es]
    assert sorted(outs) == sorted(ins)
    assert len({e[0] for e in outs}) == len(outs)
    assert all(e[3] in verts for e in outs)                 # no dangling edge
    return verts, sorted(e[1:] for e in outs)


def test_the_exported_file_is_the_graph_of_run_graph_whatever_the_page(tmp_path):
    from twingraph.graphson import export_run, run_graph
    md = _seeded_run(tmp_path, 45)
    want = _graph_of(graphson_lines(*run_graph(md, "big"), edge_id_prefix="big/e"))
    assert len(want[0]) == 46 and sum(1 for e in want[1] if e[1] == "DEPENDS_ON") == 44 + 4 + 1
    for page in (1, 7, 45, 1000):
        path = export_run(md, "big", tmp_path / f"p{page}.json", page=page)
        assert _graph_of(path.read_text(encoding="utf-8").splitlines()) == want, page
    md.close()


def test_export_reads_the_run_a_page_at_a_time(tmp_path):
    """It read every task of the run at once (and built every line before writing one)."""
    from twingraph.graphson import export_run
    md = _seeded_run(tmp_path, 120)
    asked = []
    real = md.get_tasks

    def get_tasks(run_id, *, limit=None, offset=0):
        asked.append(limit)
        return real(run_id, limit=limit, offset=offset)
    md.get_tasks = get_tasks
    export_run(md, "big", tmp_path / "g.json", page=50)
    assert asked and all(limit == 50 for limit in asked), asked
    md.close()


def test_export_memory_stays_below_the_file_size(tmp_path):
    """Building the whole graph took about four times the size of the file it wrote (for a
    1,000,000-task run, gigabytes); streamed, a page of tasks and the edges' text."""
    import tracemalloc

    from twingraph.graphson import export_run
    md = _seeded_run(tmp_path, 6000)
    tracemalloc.start()
    try:
        path = export_run(md, "big", tmp_path / "g.json", page=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert peak < size, (peak, size)          # was about 4 x size
    md.close()
