"""``@pipeline(graph_config=...)``: validation, ``lineage`` and the GraphSON ``export``, on the
real pipeline modules in tests/resources/lineage_pipes.py."""
import json
import os
from pathlib import Path

import pytest

from tests.resources import lineage_pipes as lp
from twingraph import ValidationError, pipeline
from twingraph.core.specs import PipelineSpec
from twingraph.core.states import RunState
from twingraph.lineage import run_lineage


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("config, named", [
    ({"lineage": "no"}, "lineage"),
    ({"lineage": 0}, "lineage"),
    ({"export": 3}, "export"),
    ({"export": ""}, "export"),
    ({"exprot": "x.json"}, "exprot"),
    ({"gremlin_url": "ws://localhost:8182"}, "gremlin_url"),
    ("lineage=False", "graph_config"),
])
def test_bad_graph_config_fails_at_decoration_naming_the_key(config, named):
    with pytest.raises(ValidationError, match=named):
        @pipeline(graph_config=config)
        def p():
            return None


def test_graph_config_defaults_and_accepted_values(tmp_path):
    spec = PipelineSpec.build(name="p")
    assert spec.lineage is True and spec.export_path is None and dict(spec.graph_config) == {}
    spec = PipelineSpec.build(name="p", graph_config={"lineage": False,
                                                      "export": tmp_path / "{run_id}.json"})
    assert spec.lineage is False and spec.export_path == str(tmp_path / "{run_id}.json")


# -- lineage --------------------------------------------------------------------------------
def _kinds(engine, run_id):
    _, edges = run_lineage(engine.metadata, run_id)
    return [e.kind for e in edges]


def test_lineage_false_records_no_depends_on_but_the_default_does(engine):
    on = lp.default_lineage.run(engine=engine, n=4)
    off = lp.lineage_off.run(engine=engine, n=4)
    assert on.state is off.state is RunState.SUCCESS
    assert on.value == off.value
    # load -> 4 chunks -> aggregate: 8 data-flow edges; 6 tasks belong to the pipeline.
    assert _kinds(engine, on.run_id).count("DEPENDS_ON") == 8
    assert _kinds(engine, off.run_id).count("DEPENDS_ON") == 0
    assert _kinds(engine, off.run_id).count("BELONGS_TO") == 6


# -- export ---------------------------------------------------------------------------------
def _read(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]        # every line is one JSON object


def _edges(objs, direction):
    """(edge id, src, label, dst, properties) for every outE (or inE) entry of the file."""
    out = []
    for v in objs:
        for label, es in v.get(direction, {}).items():
            for e in es:
                src, dst = (v["id"], e["inV"]) if direction == "outE" else (e["outV"], v["id"])
                out.append((e["id"], src, label, dst, json.dumps(e["properties"], sort_keys=True)))
    return sorted(out)


def _check_file_is_the_run(engine, path, run_id):
    objs = _read(path)
    ids = [v["id"] for v in objs]
    assert len(ids) == len(set(ids))
    vertices, edges = run_lineage(engine.metadata, run_id)
    qualified = {v.id: v.id if v.label == "Pipeline" else f"{run_id}/{v.id}" for v in vertices}
    assert set(ids) == set(qualified.values())                 # every vertex of the run
    by_id = {v["id"]: v for v in objs}
    for v in vertices:
        got = by_id[qualified[v.id]]
        assert got["label"] == v.label
        assert got["properties"]["name"][0]["value"] == v.properties["name"]
        if v.label == "Component":
            assert got["properties"]["node_id"][0]["value"] == v.id
            assert got["properties"]["status"][0]["value"] == v.properties["status"]
            if v.properties["started_at"] is not None:        # None: a memo hit
                assert got["properties"]["started_at"][0]["value"] == {
                    "@type": "g:Date", "@value": round(v.properties["started_at"] * 1000)}
            else:
                assert "started_at" not in got["properties"]
    out_e, in_e = _edges(objs, "outE"), _edges(objs, "inE")
    assert out_e == in_e                                       # each edge on both of its ends
    assert all(dst in by_id and src in by_id for _, src, _, dst, _ in out_e)   # no dangling
    assert len({e[0] for e in out_e}) == len(out_e)            # edge ids unique
    want = sorted((qualified[e.src], e.kind, qualified[e.dst]) for e in edges)
    assert sorted((s, k, d) for _, s, k, d, _ in out_e) == want   # every edge of the run
    return objs, out_e


def test_export_writes_the_runs_lineage_as_graphson(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # the configured path is relative
    r = lp.export_per_run.run(engine=engine, n=3)
    assert r.state is RunState.SUCCESS
    path = tmp_path / "lineage" / f"{r.run_id}.graphson.json"
    objs, out_e = _check_file_is_the_run(engine, path, r.run_id)
    assert len(objs) == 1 + 5                      # the Pipeline and 5 Components
    kinds = [k for _, _, k, _, _ in out_e]
    assert kinds.count("DEPENDS_ON") == 6 and kinds.count("BELONGS_TO") == 5
    flow = [json.loads(p) for _, _, k, _, p in out_e if k == "DEPENDS_ON"]
    assert all(isinstance(json.loads(p["data_flow"]), list) for p in flow)   # json text
    order = sorted(json.loads(p)["component_order"]["@value"]
                   for _, _, k, _, p in out_e if k == "BELONGS_TO")
    assert order == list(range(5))


def test_export_replaces_the_file_atomically_and_run_id_names_one_file_per_run(
        engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixed = tmp_path / "lineage" / "latest.graphson.json"
    first = lp.export_fixed.run(engine=engine, n=2)
    with open(fixed, encoding="utf-8") as held:     # a reader of the first file...
        inode = os.fstat(held.fileno()).st_ino
        second = lp.export_fixed.run(engine=engine, n=3)
        old = [json.loads(line) for line in held.read().splitlines()]
    # ... still reads the whole first graph: the file was replaced by a rename, not rewritten.
    assert {v["id"] for v in old if v["label"] == "Pipeline"} == {first.run_id}
    assert os.stat(fixed).st_ino != inode
    _check_file_is_the_run(engine, fixed, second.run_id)
    assert os.listdir(fixed.parent) == [fixed.name]             # no temporary file left

    a = lp.export_per_run.run(engine=engine, n=2)
    b = lp.export_per_run.run(engine=engine, n=2)
    assert a.run_id != b.run_id
    assert sorted(os.listdir(fixed.parent)) == sorted(
        [fixed.name, f"{a.run_id}.graphson.json", f"{b.run_id}.graphson.json"])
    for run in (a, b):
        _check_file_is_the_run(engine, fixed.parent / f"{run.run_id}.graphson.json", run.run_id)


def test_a_failed_run_is_exported_too(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = lp.export_failing.run(engine=engine)
    assert r.state is RunState.FAILED
    objs, _ = _check_file_is_the_run(engine, tmp_path / "failed" / f"{r.run_id}.graphson.json",
                                     r.run_id)
    status = {v["properties"]["name"][0]["value"]: v["properties"]["status"][0]["value"]
              for v in objs if v["label"] == "Component"}
    assert status == {"load_data": "SUCCESS", "explode": "FAILED"}


def test_an_export_that_cannot_be_written_warns_and_leaves_the_run_alone(engine, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the export wants a directory")

    @pipeline(name="lineage_bad_export", graph_config={"export": str(blocker / "{run_id}.json")})
    def bad_export(n: int = 2):
        return lp._fan(n)

    with pytest.warns(RuntimeWarning, match="lineage export"):
        r = bad_export.run(engine=engine)
    assert r.state is RunState.SUCCESS and r.error is None
    assert engine.metadata.get_run(r.run_id).state is RunState.SUCCESS
    logs = engine.metadata.get_logs(r.run_id, level="warning")
    assert any("lineage export" in rec.message for rec in logs)
    assert blocker.read_text().startswith("a file")


# -- the server's run service ---------------------------------------------------------------
def test_runs_started_by_the_service_honour_graph_config(tmp_path, monkeypatch):
    from twingraph.service import build_services
    from twingraph.settings import Settings

    monkeypatch.chdir(tmp_path)
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    try:
        pid = svc.runs.register_python(lp.quiet_export)
        row = svc.runs.create(svc.catalog.get_pipeline(pid), params={"n": 3})
        svc.runs.start(row.run_id)
        done = svc.runs.wait(row.run_id, timeout=60)
        assert done.state is RunState.SUCCESS
        objs, out_e = _check_file_is_the_run(
            svc.engine, tmp_path / "svc" / f"{row.run_id}.graphson.json", row.run_id)
        kinds = [k for _, _, k, _, _ in out_e]
        assert "DEPENDS_ON" not in kinds and kinds.count("BELONGS_TO") == 5   # lineage=False
    finally:
        svc.close()
