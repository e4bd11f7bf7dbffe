"""What a component's function holds, keyed (decision 0091), without the regressions a review
of its first version found: objects whose contents differ per process (a lock, an unseeded
RNG) missing in every process, keys drifting as a held model loads lazily, a lazy proxy
forced, a memory-mapped array read whole, a time zone's address in its key."""
from __future__ import annotations

import datetime
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from twingraph import component, pipeline
from twingraph.core.codeversion import _zone_text
from twingraph.engine.engine import Engine, _array_digest, held_state


class LazyModelS29:
    def __init__(self) -> None:
        self.weights: list[int] | None = None     # loaded at the first call
        self.lock = threading.Lock()
        self.rng = random.Random()

    def predict(self, x: int) -> int:
        if self.weights is None:
            self.weights = [2]
        return x * self.weights[0]


def test_a_function_argument_whose_object_loads_lazily_keeps_its_key(engine) -> None:
    model = LazyModelS29()

    def scorer(x: int) -> int:
        return model.predict(x)

    @component
    def apply_s29(fn, x: int) -> int:
        return fn(x)

    @pipeline(name="lazy_arg_s29", max_parallel=1)
    def flow():
        return [apply_s29(fn=scorer, x=i)["outputs"]["result"] for i in range(3)]

    first = flow.run(engine=engine)
    assert first.unwrap() == [0, 2, 4]
    again = flow.run(engine=engine)
    assert {t.cache_status for t in engine.metadata.get_tasks(again.run_id)} == {"hit"}


class _Proxy:
    @property
    def __class__(self):                 # noqa: PLW0237 - a lazy proxy asked its class
        raise ConnectionError("the proxy was forced")

    def __getattr__(self, name):
        raise ConnectionError("the proxy was forced")


class HolderS29:
    def __init__(self) -> None:
        self.client = _Proxy()
        self.k = 3


def test_a_lazy_proxy_held_by_an_object_is_not_forced() -> None:
    holder = HolderS29()

    def f(x):
        return holder.k * x
    assert held_state(f)                 # the plain attribute counts; the proxy is not asked


def test_objects_that_differ_per_process_but_not_in_what_they_hold_keep_one_key(
        tmp_path: Path) -> None:
    """A lock and an unseeded RNG are by their type; a plain attribute by its value."""
    code = textwrap.dedent("""
        import random, sys, threading
        sys.path.insert(0, sys.argv[1])
        from twingraph.engine.engine import held_state

        class Model:
            def __init__(self):
                self.k = 2
                self.lock = threading.Lock()
                self.rng = random.Random()

        MODEL = Model()

        def score(x):
            return MODEL.k * x
        print(held_state(score), held_state(Model().__init__))
        """)
    src = str(Path(__file__).resolve().parents[2] / "src")
    outs = {subprocess.run([sys.executable, "-c", code, src], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1 and outs.pop().strip()


def test_a_memory_mapped_array_is_keyed_by_its_file_not_read(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "emb.npy"
    np.save(path, np.arange(1000, dtype="f8"))
    mapped = np.load(path, mmap_mode="r")
    key = _array_digest(mapped)
    assert key == _array_digest(np.load(path, mmap_mode="r"))
    np.save(path, np.arange(1000, dtype="f8") * 2)       # rewritten: another key
    os.utime(path, ns=(1, 10**18))
    assert _array_digest(np.load(path, mmap_mode="r")) != key
    assert _array_digest(np.arange(3.0)) == Engine.hash_value(np.arange(3.0))


class PlainZoneS29(datetime.tzinfo):          # no __repr__ of its own
    def utcoffset(self, dt):
        return datetime.timedelta(hours=1)

    def tzname(self, dt):
        return "PLAIN"

    def dst(self, dt):
        return datetime.timedelta(0)


def test_a_zone_without_a_repr_is_keyed_without_its_address() -> None:
    text = _zone_text(PlainZoneS29())
    assert b"0x" not in text and b"PLAIN" in text
    assert _zone_text(PlainZoneS29()) == text
