"""Compare a benchmark between a git revision and the working tree, runs interleaved.

    python bench/compare.py --rev HEAD~3 memo_rerun [--rounds 5] [-- bench args...]

This machine's timings drift by 25 % or more over minutes (other tenants, CPU frequency), so two
figures taken one after the other say little about a change. Here the revision (checked out
with ``git worktree`` into a temporary directory) and the working tree take turns, each run in
a fresh interpreter with its own ``PYTHONPATH``; the bench scripts themselves come from the
working tree, so both sides run the same workload. Prints every JSON line tagged with its side,
then per numeric field the median of each side and the ratio (working tree / revision), and per
pair of back-to-back runs the median ratio and how often the tree's figure was the higher.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_side(src: Path, script: Path, args: list[str]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, str(script), *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def row_key(row: dict) -> str:
    """What identifies a line across runs: its text fields (bench, system, ...) and size n."""
    return json.dumps({k: v for k, v in row.items()
                       if (isinstance(v, str) and k != "target") or k == "n"}, sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("bench", help="script name in bench/, e.g. memo_rerun")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    script = HERE / (a.bench if a.bench.endswith(".py") else f"{a.bench}.py")
    extra = a.args[1:] if a.args[:1] == ["--"] else a.args
    with tempfile.TemporaryDirectory(prefix="twingraph-compare-") as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), a.rev],
                       cwd=ROOT, check=True)
        try:
            sides = {"rev": tree / "src", "tree": ROOT / "src"}
            got: dict[str, dict[str, dict[str, list[float]]]] = {"rev": {}, "tree": {}}
            for _ in range(a.rounds):
                for side, src in sides.items():
                    for row in run_side(src, script, extra):
                        print(json.dumps({"side": side, **row}), flush=True)
                        fields = got[side].setdefault(row_key(row), {})
                        for k, v in row.items():
                            if isinstance(v, (int, float)) and not isinstance(v, bool) \
                                    and k != "n":
                                fields.setdefault(k, []).append(float(v))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False)
    for key, fields in got["tree"].items():
        base = got["rev"].get(key, {})
        for name, values in fields.items():
            if name not in base:
                continue
            m_tree, m_rev = statistics.median(values), statistics.median(base[name])
            print(json.dumps({"compare": json.loads(key), "field": name, "rev": a.rev,
                              "median_rev": round(m_rev, 4), "median_tree": round(m_tree, 4),
                              "tree_over_rev": round(m_tree / m_rev, 3) if m_rev else None,
                              **pair_stats(base[name], values)}))


def pair_stats(rev: list[float], tree: list[float]) -> dict[str, object]:
    """Round i ran the revision, then the tree, back to back: a pair shares the machine's
    phase (this VM drifts by 25 % over minutes), so its ratio says more than two medians taken
    across phases. The median of those ratios, and in how many pairs the tree's figure was the
    higher one (for a time, fewer is better; for a rate, more)."""
    pairs = [(r, t) for r, t in zip(rev, tree) if r]
    if not pairs:
        return {}
    return {"pairs": len(pairs),
            "median_pair_ratio": round(statistics.median(t / r for r, t in pairs), 3),
            "pairs_tree_higher": sum(t > r for r, t in pairs)}


if __name__ == "__main__":
    main()
