"""Pipelines with ``graph_config`` (tests/engine/test_graph_config.py). Export paths are
relative: the tests run them from a temporary directory."""
from tests.resources.documented import aggregate_results, load_data, process_chunk
from twingraph import component, pipeline


def _fan(n: int) -> dict:
    raw = load_data(source="mem://lineage", n=n)
    parts = [process_chunk(data=c, delay=0.0) for c in raw["outputs"]["chunks"]]
    return aggregate_results(results=[p["outputs"]["data"] for p in parts])


@pipeline(name="lineage_default")
def default_lineage(n: int = 4):
    return _fan(n)


@pipeline(name="lineage_off", graph_config={"lineage": False})
def lineage_off(n: int = 4):
    return _fan(n)


@pipeline(name="lineage_export_per_run", graph_config={"export": "lineage/{run_id}.graphson.json"})
def export_per_run(n: int = 4):
    return _fan(n)


@pipeline(name="lineage_export_fixed", graph_config={"export": "lineage/latest.graphson.json"})
def export_fixed(n: int = 4):
    return _fan(n)


@pipeline(name="lineage_quiet_export",
          graph_config={"lineage": False, "export": "svc/{run_id}.graphson.json"})
def quiet_export(n: int = 3):
    return _fan(n)


@component
def explode(x: int):
    raise RuntimeError(f"exploded on {x}")


@pipeline(name="lineage_export_failing", graph_config={"export": "failed/{run_id}.graphson.json"})
def export_failing():
    raw = load_data(source="mem://failing", n=1)
    return explode(x=raw["outputs"]["chunks"][0][0])
