"""The documented pipeline, instrumented: counts executions and peak concurrency."""
import threading
import time
from collections import namedtuple
from typing import NamedTuple

from twingraph import component, pipeline

lock = threading.Lock()
state = {"running": 0, "peak": 0, "calls": []}


def reset():
    with lock:
        state.update(running=0, peak=0, calls=[])


def _enter(name):
    with lock:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        state["calls"].append(name)


def _leave():
    with lock:
        state["running"] -= 1


@component
def load_data(source: str, n: int = 4):
    _enter("load_data")
    _leave()
    return {"chunks": [[i, i + 1] for i in range(0, 2 * n, 2)], "source": source}


@component(timeout=30)
def process_chunk(data, delay: float = 0.2):
    _enter("process_chunk")
    try:
        time.sleep(delay)
        return {"data": sum(data)}
    finally:
        _leave()


@component
def aggregate_results(results):
    _enter("aggregate_results")
    _leave()
    return {"total": sum(results), "n": len(results)}


@pipeline(name="documented", max_parallel=10)
def process_pipeline(n: int = 4, delay: float = 0.2):
    raw_data = load_data(source="mem://", n=n)
    results = []
    for chunk in raw_data["outputs"]["chunks"]:
        results.append(process_chunk(data=chunk, delay=delay, parent_hash=raw_data["hash"]))
    final = aggregate_results(results=[r["outputs"]["data"] for r in results],
                              parent_hashes=[r["hash"] for r in results])
    return final


@pipeline(name="narrow", max_parallel=2)
def narrow_pipeline(n: int = 6):
    raw = load_data(source="mem://narrow", n=n)
    return [process_chunk(data=c, delay=0.1) for c in raw["outputs"]["chunks"]]


class Stats(NamedTuple):
    mean: float
    count: int


@component
def as_namedtuple(xs):
    return Stats(mean=sum(xs) / len(xs), count=len(xs))


@component
def as_plain(xs):
    return max(xs)


@component
def as_collections_namedtuple(xs):
    Out = namedtuple("Out", ["filtered", "count"])
    filtered = [x for x in xs if x > 1]
    return Out(filtered=filtered, count=len(filtered))


@pipeline(name="shapes")
def shapes_pipeline():
    xs = [1, 2, 3]
    a = as_namedtuple(xs=xs)
    b = as_plain(xs=xs)
    c = as_collections_namedtuple(xs=xs)
    return {"mean": a["outputs"]["mean"], "count": a["outputs"]["count"],
            "max": b["outputs"]["result"], "filtered": c["outputs"]["filtered"]}
