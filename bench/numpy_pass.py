"""A 200 MB NumPy array produced by one task and summed by another. Target: peak RSS growth
<= 1.3x the array. Runs in a fresh subprocess per store so peaks are not shared. The last row
runs both tasks in worker processes (``executor="process"``): the driver's peak, and the
largest worker's (``worker_peak_rss_mb``).

    python bench/numpy_pass.py [--mb 200]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(mb: int, store: str, executor: str) -> None:
    sys.path.insert(0, str(HERE))
    import numpy as np
    from common import peak_rss_bytes, tempdir

    from twingraph import component, pipeline
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.factory import create_storage_backend

    n = mb * 1024 * 1024 // 8

    @component(executor=executor)
    def produce(n):
        return {"arr": np.ones(n, dtype=np.float64)}

    @component(executor=executor)
    def total(arr):
        return float(arr.sum())

    @pipeline(name="numpy_pass")
    def p(n):
        return total(arr=produce(n=n)["outputs"]["arr"])

    with tempdir() as root:
        results = create_storage_backend(store, str(root / ("results.db" if store == "sqlite" else "fs")))
        eng = Engine(results=results, metadata=SQLMetadataStore(f"sqlite:///{root}/m.db", create=True))
        p.run(engine=eng, no_cache=True, n=1000)    # warm-up: imports, tables, threads
        base = peak_rss_bytes()
        r = p.run(engine=eng, no_cache=True, n=n)
        assert r.value["outputs"]["result"] == float(n), r.error
        peak = peak_rss_bytes()
        eng.close()
    import resource
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"store": store, "array_bytes": n * 8, "baseline_rss": base, "peak_rss": peak,
                      "worker_peak_rss": workers}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        child(int(a.child[0]), a.child[1], a.child[2])
        return
    for store, executor in (("sqlite", "auto"), ("filesystem", "auto"), ("sqlite", "process")):
        out = subprocess.run([sys.executable, __file__, "--child", str(a.mb), store, executor],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        extra = {"worker_peak_rss_mb": round(row["worker_peak_rss"] / 2**20)} \
            if executor == "process" else {}
        print(json.dumps({"bench": "numpy_pass", "store": store, "executor": executor,
                          **extra, "array_mb": a.mb,
                          "peak_rss_mb": round(row["peak_rss"] / 2**20),
                          "baseline_rss_mb": round(row["baseline_rss"] / 2**20),
                          "ratio_peak_over_array": round(row["peak_rss"] / row["array_bytes"], 2),
                          "ratio_growth_over_array": round(
                              (row["peak_rss"] - row["baseline_rss"]) / row["array_bytes"], 2),
                          "target": "<=1.3"}), flush=True)


if __name__ == "__main__":
    main()
