"""What the end-to-end server loads (``twingraph server --load tests/resources/server_app.py``).

Components for declarative workflows (the SDK's ``Workflow`` builder and the Tauro pipeline of
the curl flows), one Python ``@pipeline`` with params, and a slow component to have something
running when a test needs to stop or cancel it.
"""

import time

from twingraph import component, get_logger, pipeline

log = get_logger()


@component
def extract(date: str = "2025-01-26", n: int = 3):
    log.info("extracting %d rows for %s", n, date)
    return {"rows": [{"date": date, "value": i} for i in range(n)]}


@component
def transform(rows, factor: int = 2):
    if factor < 0:
        log.error("negative factor %d", factor)
        raise ValueError(f"factor must be >= 0, got {factor}")
    log.info("transforming %d rows", len(rows))
    return {"rows": [{**r, "value": r["value"] * factor} for r in rows]}


@component
def load(rows):
    log.warning("loading %d rows", len(rows))
    return {"loaded": len(rows), "total": sum(r["value"] for r in rows)}


@component(cache=False)
def sleep_for(seconds: float = 1.0):
    log.info("sleeping %.2fs", seconds)
    time.sleep(seconds)
    return {"slept": seconds}


@pipeline(name="etl_python", max_parallel=4)
def etl_python(date: str = "2025-01-26", n: int = 3, factor: int = 2):
    raw = extract(date=date, n=n)
    cleaned = transform(rows=raw["outputs"]["rows"], factor=factor)
    return load(rows=cleaned["outputs"]["rows"])


def etl_definition(n: "int | str" = 3, date: "str | None" = None) -> dict:
    """extract -> transform -> load as a declarative definition (Tauro ``from``/``to`` edges).
    It reads no run param, so both a manual run (``params: {date}``) and a scheduled one
    (``params: {logical_date}``) can run it; ``n="${params.n}"`` makes it take one. A ``date``
    of its own keeps its tasks from being memo hits of other tests' (so they run and log)."""
    return {
        "nodes": [
            {"id": "extract", "type": "source", "component": "extract",
             "config": {"n": n, **({"date": date} if date is not None else {})}},
            {"id": "transform", "type": "processor", "component": "transform", "config": {}},
            {"id": "load", "type": "sink", "component": "load", "config": {}},
        ],
        "edges": [
            {"from": "extract", "to": "transform", "sourceHandle": "rows", "targetHandle": "rows"},
            {"from": "transform", "to": "load", "sourceHandle": "rows", "targetHandle": "rows"},
        ],
    }
