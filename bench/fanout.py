"""Fan-out of N no-op tasks (1 -> N -> 1): engine overhead per task vs ThreadPoolExecutor and dask.

    python bench/fanout.py [--n 10000] [--repeat 3]

TwinGraph runs on the embedded default with durable SQLite state (results and metadata), memo
lookups on (each run uses a fresh store so every task really executes). Baselines run the
same DAG in the same process: a plain ThreadPoolExecutor and dask's threaded scheduler.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, sqlite_engine, tempdir, timed  # noqa: E402

from twingraph import component, pipeline  # noqa: E402


def source(n):
    return list(range(n))


def work(x):
    return x


def total(xs):
    return len(xs)


c_source = component(source, name="source")
c_work = component(work, name="work")
c_total = component(total, name="total")


@pipeline(name="fanout", max_parallel=8)
def fanout(n: int):
    xs = c_source(n=n)
    parts = [c_work(x=x) for x in xs["outputs"]["result"]]
    return c_total(xs=[p["outputs"]["result"] for p in parts])


def run_twingraph(n: int) -> float:
    with tempdir() as root:
        eng = sqlite_engine(root)
        try:
            fanout.run(engine=eng, n=64)            # warm-up: code versions, inline stats
            with tempdir() as fresh:
                eng2 = sqlite_engine(fresh)
                eng2._stats = eng._stats           # same process, same learned task sizes
                dt, r = timed(fanout.run, engine=eng2, n=n)
                assert r.value["outputs"]["result"] == n, r.error
                eng2.close()
            return dt
        finally:
            eng.close()


def run_threadpool(n: int) -> float:
    def go():
        with ThreadPoolExecutor(8) as pool:
            xs = pool.submit(source, n).result()
            futs = [pool.submit(work, x) for x in xs]
            wait(futs)
            return pool.submit(total, [f.result() for f in futs]).result()
    dt, out = timed(go)
    assert out == n
    return dt


def run_dask(n: int) -> float:
    import dask
    graph = {"src": (source, n)}
    for i in range(n):
        graph[f"w{i}"] = (lambda xs, i=i: work(xs[i]), "src")
    graph["agg"] = (total, [f"w{i}" for i in range(n)])
    dt, out = timed(dask.threaded.get, graph, "agg", num_workers=8)
    assert out == n
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tg = min(run_twingraph(a.n) for _ in range(a.repeat))
    tp = min(run_threadpool(a.n) for _ in range(a.repeat))
    dk = min(run_dask(a.n) for _ in range(a.repeat))
    emit(bench="fanout", n=a.n, system="twingraph", seconds=round(tg, 4),
         us_per_task=round(tg / (a.n + 2) * 1e6, 1))
    emit(bench="fanout", n=a.n, system="threadpool", seconds=round(tp, 4),
         us_per_task=round(tp / (a.n + 2) * 1e6, 1))
    emit(bench="fanout", n=a.n, system="dask-threaded", seconds=round(dk, 4),
         us_per_task=round(dk / (a.n + 2) * 1e6, 1))
    emit(bench="fanout", ratio_dask_over_twingraph=round(dk / tg, 2),
         ratio_twingraph_over_threadpool=round(tg / tp, 2),
         target="<=50 us/task and >=4x faster than dask")


if __name__ == "__main__":
    main()
