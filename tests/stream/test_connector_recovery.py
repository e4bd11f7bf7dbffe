"""End to end: a Kafka→map→Kafka and a Redis→map→Redis job killed with SIGKILL, restored, exact.

The job (``connector_crash_job.py``) runs in a subprocess over a bounded input with a checkpoint
every 100 ms. It is killed at random moments at least five times and restarted each time from the
latest checkpoint with another parallelism (2, 3, 1, 2, ...: the connectors' states are merged and
split again), then allowed to finish. What the sink committed must equal the
reference (every input number doubled) exactly as a multiset: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest_brokers import create_topic, kafka_bootstrap, read_topic, redis_prefix, redis_url  # noqa: F401

JOB = Path(__file__).with_name("connector_crash_job.py")
N = 6000
KILLS = 5
PARALLELISM = ["2", "3", "1"]


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                      os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(JOB), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _checkpoints(chk: Path) -> set[str]:
    return {d.name for d in chk.iterdir() if d.name.startswith("chk-")} if chk.exists() else set()


def kill_restore_finish(args: list[str], chk: Path) -> tuple[int, int]:
    """Run the job, SIGKILL it KILLS times, then let it finish; (kills, runs that restored).

    Odd attempts are killed at a random moment (maybe before any checkpoint of that run); even
    ones once the run completed a new checkpoint, a random moment later — so restores from a
    checkpoint happen however slow the machine is.
    """
    rnd = random.Random()
    kills = restored = 0
    for attempt in range(30):
        if kills >= KILLS:
            break
        before = _checkpoints(chk)
        p = _start([PARALLELISM[attempt % 3], *args])
        assert p.stderr is not None
        first = p.stderr.readline()  # printed once the job is built and about to run
        restored += first.startswith("restored ") and "restored None" not in first
        if attempt % 2:
            deadline = time.monotonic() + 20
            while (p.poll() is None and time.monotonic() < deadline
                   and not _checkpoints(chk) - before):
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.3))
        else:
            time.sleep(rnd.uniform(0.05, 1.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=60)
    p = _start(["2", *args])
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    restored += "restored None" not in err
    return kills, restored


def _check(got: Counter[str]) -> None:
    expected = Counter(f"out-{2 * i}" for i in range(N))
    assert got == expected, (f"lost: {sum((expected - got).values())}, "
                             f"duplicated: {sum((got - expected).values())}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kafka_job_killed_and_restored_gives_exactly_once_output(kafka_bootstrap: str,
                                                                 tmp_path: Path) -> None:
    from confluent_kafka import Producer

    tin, tout = create_topic(kafka_bootstrap, 4), create_topic(kafka_bootstrap, 3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 10})
    for i in range(N):
        producer.produce(tin, str(i).encode(), partition=i % 4)
    assert producer.flush(15) == 0
    kills, restored = kill_restore_finish(["kafka", kafka_bootstrap, tin, tout,
                                           str(tmp_path / "chk")], tmp_path / "chk")
    assert kills >= KILLS, "the job finished before it could be killed five times"
    assert restored >= 2, "the killed runs never got as far as a completed checkpoint"
    _check(Counter(m.value().decode() for m in read_topic(kafka_bootstrap, tout)))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_redis_job_killed_and_restored_gives_exactly_once_output(redis_url: str,
                                                                 redis_prefix: str,
                                                                 tmp_path: Path) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    streams = [f"{redis_prefix}in{k}" for k in range(3)]
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(streams[i % 3], {"n": str(i)})
    pipe.execute()
    out = f"{redis_prefix}out"
    kills, restored = kill_restore_finish(["redis", redis_url, ",".join(streams), out,
                                           str(tmp_path / "chk"), f"{redis_prefix}m:"],
                                          tmp_path / "chk")
    assert kills >= KILLS, "the job finished before it could be killed five times"
    assert restored >= 2, "the killed runs never got as far as a completed checkpoint"
    _check(Counter(fields[b"value"].decode() for _, fields in client.xrange(out)))
    client.close()
