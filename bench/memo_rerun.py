"""Re-running an unchanged N-task pipeline: every task is a memo hit. Target: 10,000 in <= 0.3 s.

    python bench/memo_rerun.py [--n 10000]

Baseline printed beside it: the first (cold) run of the same pipeline in the same process.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, sqlite_engine, tempdir, timed  # noqa: E402
from fanout import fanout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempdir() as root:
        eng = sqlite_engine(root)
        cold, r = timed(fanout.run, engine=eng, n=a.n)
        assert r.state.value == "SUCCESS"
        warm = []
        for _ in range(a.repeat):
            dt, r = timed(fanout.run, engine=eng, n=a.n)
            tasks = eng.metadata.get_tasks(r.run_id)
            assert {t.cache_status for t in tasks} == {"hit"}, "not all hits"
            warm.append(dt)
        eng.close()
    emit(bench="memo_rerun", n=a.n, cold_seconds=round(cold, 3), rerun_seconds=round(min(warm), 3),
         speedup=round(cold / min(warm), 1), target="<=0.3 s for 10,000")


if __name__ == "__main__":
    main()
