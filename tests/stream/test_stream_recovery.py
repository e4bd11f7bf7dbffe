"""Flink-style failure test: kill -9 a running job at random points, restore, compare the output.

The job (``stream_crash_job.py``) runs in a subprocess over a bounded, replayable source with
checkpoints every 100 ms and an exactly-once FileSink. The test kills it with SIGKILL at random
moments at least five times, restarting it each time from the latest checkpoint, then lets it
finish. The committed output must equal, line for line (as a multiset), the output of a run that
was never interrupted: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from twingraph.stream import read_committed

JOB = Path(__file__).with_name("stream_crash_job.py")
N = 12_000


def start(out: Path, chk: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                      os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(JOB), str(out), str(chk), str(N), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def latest_checkpoint(chk: Path) -> int:
    ids = [int(d.name.split("-")[1]) for d in chk.glob("chk-*") if not d.name.endswith(".inprogress")] \
        if chk.exists() else []
    return max(ids, default=0)


def run_to_end(out: Path, chk: Path, *extra: str) -> str:
    p = start(out, chk, *extra)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return err


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("backend", "source"), [("memory", "collection"), ("sqlite", "files")])
def test_kill_minus_9_at_random_points_gives_exactly_once_output(tmp_path: Path, backend: str, source: str) -> None:
    reference = tmp_path / "reference"
    sys.path.insert(0, str(JOB.parent))
    try:
        import stream_crash_job
    finally:
        sys.path.remove(str(JOB.parent))
    extra: tuple[str, ...] = ("2", backend)
    input_dir = None
    if source == "files":
        input_dir = str(tmp_path / "input")
        stream_crash_job.write_inputs(input_dir, N)
        extra += (input_dir,)
    stream_crash_job.build(str(reference), str(tmp_path / "ref-chk"), N, 2, backend, input_dir).execute()
    expected = Counter(read_committed(reference))
    assert sum(expected.values()) > N  # running counts for every event plus the window counts

    out, chk = tmp_path / "out", tmp_path / "chk"
    rnd = random.Random()
    kills, restored = 0, 0
    for _ in range(30):
        if kills >= 5:
            break
        p = start(out, chk, *extra)
        assert p.stderr is not None
        first = p.stderr.readline()  # the job is built and about to run (imports can take a second)
        restored += first.startswith("restored ") and "restored None" not in first
        # kill at a random moment after the run completed one more checkpoint than the last run,
        # so every run makes progress and the kills land while records are in flight
        before = latest_checkpoint(chk)
        deadline = time.monotonic() + 20
        while latest_checkpoint(chk) <= before and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rnd.uniform(0.0, 0.06))     # short: a fast run must not finish between kills
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=60)
    assert kills >= 5, "the job finished before it could be killed five times"
    err = run_to_end(out, chk, *extra)
    restored += "restored None" not in err
    # every run after the first restored from a checkpoint (the kills came after one completed)
    assert restored >= kills, f"only {restored} of {kills + 1} runs restored from a checkpoint"
    got = Counter(read_committed(out))
    assert got == expected, (f"lost: {sum((expected - got).values())}, "
                             f"duplicated: {sum((got - expected).values())}")
    assert not [f for f in out.iterdir() if f.name.startswith(".")], "staged files left behind"
