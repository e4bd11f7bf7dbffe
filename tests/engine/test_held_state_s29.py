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
from twingraph.engine.engine import Engine
from twingraph.engine.heldstate import _array_digest, held_state


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
        from twingraph.engine.heldstate import held_state

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


def test_views_of_one_memory_map_are_two_inputs(tmp_path: Path) -> None:
    """A slice keeps its memory map's file name and offset: ``MM[:5]`` and ``MM[5:]`` were
    keyed alike, one result served for both. (A module of its own, run as a user's pipeline
    file: pytest's rewritten test modules are keyed by their pickles.)"""
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "w.npy", np.arange(10, dtype="f8"))
    (tmp_path / "flow.py").write_text(textwrap.dedent("""
        import numpy as np
        from twingraph import component, pipeline

        MM = np.load("w.npy", mmap_mode="r")

        def make(w):
            def total():
                return float(w.sum())
            return total

        @component
        def call(fn) -> float:
            return fn()

        @pipeline(name="mm_views_s29")
        def flow():
            return [call(fn=make(MM[:5]))["outputs"]["result"],
                    call(fn=make(MM[5:]))["outputs"]["result"]]

        print(flow.run().unwrap())
        """))
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "flow.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[10.0, 35.0]", out.stdout + out.stderr


class ArrayEqualS29:
    """Equal by an array's elements: ``==`` returns an array (its truth is ambiguous)."""

    def __init__(self, w) -> None:
        self.w = w

    def __eq__(self, other):
        return self.w == other.w

    def __hash__(self) -> int:
        return 1

    def scaled(self, x: float) -> float:
        return float(x * self.w.sum())


def test_a_bound_method_component_of_an_object_with_its_own_eq(engine) -> None:
    """Kept per object in a dictionary that asked the object's ``__eq__``: the second spec
    raised "truth value of an array is ambiguous"."""
    np = pytest.importorskip("numpy")
    a = component(name="scaled_a_s29")(ArrayEqualS29(np.array([1.0, 2.0])).scaled)
    b = component(name="scaled_b_s29")(ArrayEqualS29(np.array([1.0, 1.0])).scaled)

    @pipeline(name="own_eq_s29")
    def flow():
        return [a(x=4.0)["outputs"]["result"], b(x=3.0)["outputs"]["result"]]
    assert flow.run(engine=engine).unwrap() == [12.0, 6.0]


def test_an_object_array_held_keeps_one_key_across_processes(tmp_path: Path) -> None:
    """Pickled, an object array of a class of the pipeline's file (or a set of strings) had a
    new key in every process: it is by its type, as before."""
    (tmp_path / "flow.py").write_text(textwrap.dedent("""
        import numpy as np
        from twingraph.engine.heldstate import held_state

        class Cell:
            def __init__(self, v):
                self.v = v

        CELLS = np.array([Cell(1), {"a", "b", "c"}], dtype=object)

        def make(cells):
            def f():
                return cells
            return f
        print(repr(held_state(make(CELLS))))
        """))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    outs = {subprocess.run([sys.executable, "flow.py"], cwd=tmp_path, capture_output=True,
                           text=True, env=dict(env, PYTHONHASHSEED=seed)).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1, outs
