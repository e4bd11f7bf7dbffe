"""A large declarative DAG through the dynamic scheduler: nodes/s, RSS per node, and whether
the cost per scheduling step stays flat as the graph grows.

    python bench/large_dag.py [--sizes 10000,100000,1000000] [--no-peers]

Each size runs in a fresh subprocess (so peak RSS is its own), on the embedded default with
durable SQLite results and metadata. Bytes per node count the peak RSS growth of that process
plus the peak RSS of its writer process, if the run started one (decision 0012). Node i depends on i-1 and i//2 (every node has 1-2
inputs; the graph is deep and wide). Operations are no-ops returning a small int.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(n: int, peers: bool = True) -> None:
    sys.path.insert(0, str(HERE))
    from common import peak_rss_bytes, sqlite_engine, tempdir

    from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                          NodeDefinition, register_operation)

    def inc(deps, params):
        return params["i"]

    register_operation("inc", inc)
    nodes = [NodeDefinition(f"n{i}", "inc", [f"n{i - 1}", f"n{i // 2}"] if i > 1 else
                            (["n0"] if i == 1 else []), {"i": i}) for i in range(n)]
    for nd in nodes:
        nd.arguments = list(dict.fromkeys(nd.arguments))
    dag = DAGDefinition(f"big{n}", nodes)
    rss_defined = peak_rss_bytes()
    with tempdir() as root:
        eng = sqlite_engine(root)
        warm = DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=8), engine=eng)
        warm.run(DAGDefinition("warm", [NodeDefinition(f"w{i}", "inc", [], {"i": -i})
                                        for i in range(64)]))
        sched = DynamicScheduler(eng.results, ExecutionConfig(max_concurrent_nodes=8,
                                                               retry_failed_nodes=False), engine=eng)
        t0 = time.perf_counter()
        r = sched.run(dag)
        dt = time.perf_counter() - t0
        assert r.state.value == "SUCCESS", r.error
        writer = eng.recorder.writer
        writer_rss = eng.recorder.writer_peak_rss() or 0    # decision 0012: its peak counts too
        eng.close()
    rss_peak = peak_rss_bytes()
    deps = {nd.node_id: list(nd.arguments) for nd in nodes}
    del dag, nodes, sched, warm, eng, r
    dask_s = _dask(deps) if peers else None
    pool_s = _threadpool(deps) if peers else None
    print(json.dumps({"n": n, "seconds": dt, "nodes_per_s": n / dt, "rss_defined": rss_defined,
                      "rss_peak": rss_peak, "writer": writer, "writer_rss_peak": writer_rss,
                      "dask_seconds": dask_s, "threadpool_seconds": pool_s}))


def _dask(deps: dict) -> float:
    import dask

    def inc(*_xs, i):
        return i

    graph = {k: (lambda *xs, i=int(k[1:]): inc(*xs, i=i), *v) for k, v in deps.items()}
    t0 = time.perf_counter()
    dask.threaded.get(graph, list(deps)[-1], num_workers=8)
    return time.perf_counter() - t0


def _threadpool(deps: dict) -> float:
    from concurrent.futures import ThreadPoolExecutor

    def inc(_xs, i):
        return i

    t0 = time.perf_counter()
    futs: dict = {}
    with ThreadPoolExecutor(8) as pool:
        for k, v in deps.items():            # definition order is topological here
            futs[k] = pool.submit(inc, [futs[d].result() for d in v], int(k[1:]))
        futs[list(deps)[-1]].result()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--child", type=int)
    ap.add_argument("--no-peers", action="store_true",
                    help="skip dask and the thread pool (quicker, for comparing revisions)")
    a = ap.parse_args()
    if a.child:
        child(a.child, peers=not a.no_peers)
        return
    rows = []
    for n in map(int, a.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n),
                              *(["--no-peers"] if a.no_peers else [])],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["bookkeeping_bytes_per_node"] = \
            (row["rss_peak"] - row["rss_defined"] + row["writer_rss_peak"]) / n
        rows.append(row)
        line = {"bench": "large_dag", "n": n, "seconds": round(row["seconds"], 3),
                "nodes_per_s": round(row["nodes_per_s"]),
                "bytes_per_node": round(row["bookkeeping_bytes_per_node"]),
                "writer": row["writer"], "writer_rss_mb": round(row["writer_rss_peak"] / 2**20)}
        if row["dask_seconds"] is not None:
            line.update({"dask_seconds": round(row["dask_seconds"], 3),
                         "threadpool_seconds": round(row["threadpool_seconds"], 3),
                         "ratio_dask_over_twingraph": round(row["dask_seconds"] / row["seconds"], 2),
                         "ratio_twingraph_over_threadpool":
                             round(row["seconds"] / row["threadpool_seconds"], 2)})
        print(json.dumps(line), flush=True)
    if len(rows) > 1:
        flat = rows[-1]["nodes_per_s"] / rows[0]["nodes_per_s"]
        print(json.dumps({"bench": "large_dag", "throughput_ratio_largest_over_smallest":
                          round(flat, 2), "target": ">=30000 nodes/s, <=1KB/node, ratio ~1"}))


if __name__ == "__main__":
    main()
