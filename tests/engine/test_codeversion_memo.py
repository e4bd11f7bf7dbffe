"""Memo keys follow what a component really runs: module constants, helpers reached through an
imported user module, user classes and closure cells. Each pipeline is a real module written to
``tmp_path`` and imported fresh under a unique name, as a second ``twingraph run`` would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

@pytest.fixture
def fresh(user_modules):
    """Modules written to files and imported fresh (``tests/conftest.py``)."""
    return user_modules


def _status(engine, run_id, node_id):
    return {t.node_id: t for t in engine.metadata.get_tasks(run_id)}[node_id]


def _rerun(engine, fresh, v1, v2, pipeline_attr="p", **helpers_v):
    """Run v1 then v2 (fresh modules, same pipeline name) on one engine; returns both runs."""
    m1 = fresh(v1, **{k: v[0] for k, v in helpers_v.items()})
    r1 = getattr(m1, pipeline_attr).run(engine=engine)
    m2 = fresh(v2, **{k: v[1] for k, v in helpers_v.items()})
    r2 = getattr(m2, pipeline_attr).run(engine=engine)
    return m1, r1, m2, r2


CONST = """
from twingraph import component, pipeline
FACTOR = {factor}

@component
def scale(x):
    return x * FACTOR

@pipeline(name="cv_const")
def p():
    return scale(x=10)
"""


def test_changed_module_constant_is_a_miss(engine, fresh):
    _, r1, _, r2 = _rerun(engine, fresh, CONST.replace("{factor}", "2"),
                          CONST.replace("{factor}", "5"))
    assert r1.value["outputs"]["result"] == 20
    assert r2.value["outputs"]["result"] == 50               # not the stale 20
    t = _status(engine, r2.run_id, "scale-0")
    assert t.cache_status == "miss"
    assert t.cache_reason == "code changed since the last run"


def test_unchanged_module_reimported_is_a_hit(engine, fresh):
    src = CONST.replace("{factor}", "2")
    _, _, _, r2 = _rerun(engine, fresh, src, src)
    assert _status(engine, r2.run_id, "scale-0").cache_status == "hit"


HELPER = """
def helper(x):
    return x + {inc}
"""

USES_HELPER = """
from twingraph import component, pipeline
import {h} as helpers

@component
def work(x):
    return helpers.helper(x)

@pipeline(name="cv_helper")
def p():
    return work(x=1)
"""


def test_changed_helper_in_imported_module_is_a_miss(engine, fresh):
    _, r1, _, r2 = _rerun(engine, fresh, USES_HELPER, USES_HELPER,
                          h=(HELPER.replace("{inc}", "1"), HELPER.replace("{inc}", "100")))
    assert r1.value["outputs"]["result"] == 2
    assert r2.value["outputs"]["result"] == 101
    assert _status(engine, r2.run_id, "work-0").cache_status == "miss"


CLASS = """
from twingraph import component, pipeline

class Model:
    def predict(self, x):
        return x * {w}

@component
def infer(x):
    return Model().predict(x)

@pipeline(name="cv_class")
def p():
    return infer(x=3)
"""


def test_changed_user_class_is_a_miss(engine, fresh):
    _, r1, _, r2 = _rerun(engine, fresh, CLASS.replace("{w}", "2"), CLASS.replace("{w}", "3"))
    assert r1.value["outputs"]["result"] == 6
    assert r2.value["outputs"]["result"] == 9
    assert _status(engine, r2.run_id, "infer-0").cache_status == "miss"


FACTORY = """
from twingraph import component, pipeline

def make(k):
    @component(name="mul")
    def mul(x):
        return x * k
    return mul

m2 = make(2)
m3 = make(3)

@pipeline(name="cv_closure")
def p():
    return [m2(x=10), m3(x=10), m2(x=10), m3(x=10)]
"""


def test_closure_factory_components_are_not_twins(engine, fresh):
    m = fresh(FACTORY)
    assert m.m2.spec.code_version != m.m3.spec.code_version
    r = m.p.run(engine=engine)
    assert [v["outputs"]["result"] for v in r.value] == [20, 30, 20, 30]
    r2 = m.p.run(engine=engine)                     # and each is a hit of its own result
    assert [v["outputs"]["result"] for v in r2.value] == [20, 30, 20, 30]
    assert {t.cache_status for t in engine.metadata.get_tasks(r2.run_id)} == {"hit"}


DETERMINISM = """
from twingraph import component

NAMES = frozenset({"alpha", "beta", "gamma", "delta"})
TABLE = {"b": 2, "a": 1, "c": {"x", "y", "z"}}
SENTINEL = object()

class Thing:
    def go(self, x):
        return x

def make(k, tags):
    @component(name="w")
    def w(x):
        return Thing().go(x) * k, sorted(NAMES), TABLE, tags, SENTINEL
    return w

comp = make({k}, {"s", "t", "u", "v"})
"""

PRINT_VERSION = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
m = importlib.import_module(sys.argv[2])
print(json.dumps(m.comp.spec.code_version))
"""


def _version_in_fresh_interpreter(directory: Path, module: str, seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    src_root = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", PRINT_VERSION, str(directory), module],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_version_is_the_same_in_two_fresh_interpreters(tmp_path):
    (tmp_path / "cv_determinism.py").write_text(DETERMINISM.replace("{k}", "2"))
    first = _version_in_fresh_interpreter(tmp_path, "cv_determinism", "1")
    second = _version_in_fresh_interpreter(tmp_path, "cv_determinism", "2")
    assert first == second          # different hash seeds, different addresses
    (tmp_path / "cv_determinism.py").write_text(DETERMINISM.replace("{k}", "3"))
    changed = _version_in_fresh_interpreter(tmp_path, "cv_determinism", "1")
    assert changed != first         # and it still sees the closure value


def test_a_version_given_to_the_decorator_is_the_code_version(engine):
    """``@component(version=...)`` failed at decoration (the spec builder was handed it)."""
    from twingraph import component, pipeline
    from twingraph.errors import ValidationError

    def make(ret):
        @component(version="v1", name="pinned")
        def pinned(x):
            return x + ret
        return pinned

    first, second = make(1), make(2)
    assert first.spec.code_version == second.spec.code_version == "v1"

    @pipeline(name="pinned_version")
    def p():
        return first(x=1)
    r1 = p.run(engine=engine)
    assert r1.value["outputs"]["result"] == 2
    # The code changed but the version did not: the stored result is the answer (the user said so).
    @pipeline(name="pinned_version")
    def q():
        return second(x=1)
    r2 = q.run(engine=engine)
    assert r2.value["outputs"]["result"] == 2
    assert _status(engine, r2.run_id, "pinned-0").cache_status == "hit"
    with pytest.raises(ValidationError, match="version"):
        component(version=3)(lambda x: x)


ARG_HELPERS = """
from dataclasses import dataclass

def scale(x):
    return x * 2{edit}

class Scaler:
    def __init__(self, k):
        self.k = k
    def apply(self, x):
        return x * self.k{edit}

@dataclass
class Offset:
    k: int
    def apply(self, x):
        return x + self.k{edit}
"""

ARG_FLOW = """
import json
from twingraph import component, pipeline
from twingraph.runtime import default_engine
import helpers

@component
def apply_fn(fn, x):
    return fn(x)

@component
def apply_obj(obj, x):
    return obj.apply(x)

@pipeline(name="code_as_arguments")
def flow():
    return [apply_fn(helpers.scale, 5), apply_obj(helpers.Scaler(3), 5),
            apply_obj(helpers.Offset(1), 5)]

engine = default_engine()          # at TWINGRAPH_HOME
r = flow.run(engine=engine)
engine.recorder.flush()
print(json.dumps([[v["outputs"]["result"] for v in r.value],
                  sorted(t.cache_status for t in engine.metadata.get_tasks(r.run_id))]))
engine.close()
"""


def test_code_given_as_an_argument_is_part_of_the_key(tmp_path):
    """A module's function, an instance of a user class or a dataclass passed as an argument
    was keyed by its pickle (a function's name, an instance's state): editing its code was a
    stale hit. Each run in a fresh interpreter, as ``twingraph run`` runs them."""
    (tmp_path / "flow.py").write_text(ARG_FLOW)

    def run(edit):
        (tmp_path / "helpers.py").write_text(ARG_HELPERS.replace("{edit}", edit))
        out = subprocess.run([sys.executable, str(tmp_path / "flow.py")], capture_output=True,
                             text=True, cwd=tmp_path,
                             env={**os.environ, "TWINGRAPH_HOME": str(tmp_path / "home")})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run("") == [[10, 15, 6], ["miss", "miss", "miss"]]
    assert run("") == [[10, 15, 6], ["hit", "hit", "hit"]]          # stable across processes
    assert run(" + 1000") == [[1010, 1015, 1006], ["miss", "miss", "miss"]]


def test_an_instance_argument_holding_a_set_keys_alike_in_every_process(tmp_path):
    """Its attributes were pickled, and a set's pickle follows the hash seed: the same
    ``Scaler(4)`` (or its bound method) gave another key in every process (a miss)."""
    (tmp_path / "seeded.py").write_text(
        "class Scaler:\n    def __init__(self, k):\n        self.k = k\n"
        "        self.seen = {'a', 'b', 'c', 'd', 'e'}\n"
        "    def __call__(self, x):\n        return x * self.k\n")
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import seeded; "
              "from twingraph.engine.engine import Engine; "
              "print(Engine.hash_value(seeded.Scaler(4)), "
              "Engine.hash_value(seeded.Scaler(4).__call__))")

    def hashes(seed):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        return out.stdout.split()
    first = hashes("1")
    assert all(hashes(seed) == first for seed in ("2", "3", "4"))
