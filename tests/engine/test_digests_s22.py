"""Memo keys of component configs and of mapping and memoryview arguments (a review, session
22): values JSON cannot tell apart, and mappings keyed by their pickle.

Each test runs real pipelines on a real engine; ``monkeypatch`` only puts ``tmp_path`` first on
``sys.path`` for the helper modules a test writes there and edits between runs (as a user
edits a file); nothing is patched."""
import enum
import importlib
import json
import os
import subprocess
import sys
import threading
from collections import OrderedDict, defaultdict
from pathlib import Path

from twingraph import BaseComponent, component, pipeline
from twingraph.core.hashing import canonical_json, config_digest
from twingraph.engine.engine import Engine

ROOT = Path(__file__).resolve().parents[2]


class Labeler(BaseComponent):
    def execute(self, pred: int) -> str:
        return self.config["labels"].get(pred, "unknown")


class Shaper(BaseComponent):
    def execute(self, n: int) -> str:
        return type(self.config["shape"]).__name__


class Mode(enum.IntEnum):
    FAST = 1


class Moder(BaseComponent):
    def execute(self, n: int) -> str:
        return type(self.config["mode"]).__name__


def test_configs_json_cannot_tell_apart_are_not_one_computation(engine):
    """``config_digest`` keyed a config by ``json.loads(canonical_json(config))``: int and str
    keys, tuples and lists, an ``IntEnum`` and its int came back alike, and the second of
    each pair was taken for the same computation as the first, in one run."""
    @pipeline(name="s22_config_types")
    def p():
        return [Labeler({"labels": {0: "cat", 1: "dog"}})(pred=0),
                Labeler({"labels": {"0": "cat", "1": "dog"}})(pred=0),
                Shaper({"shape": (2, 3)})(n=1), Shaper({"shape": [2, 3]})(n=1),
                Moder({"mode": Mode.FAST})(n=1), Moder({"mode": 1})(n=1)]

    r = p.run(engine=engine)
    assert [x["outputs"]["result"] for x in r.value] == \
        ["cat", "unknown", "tuple", "list", "Mode", "int"]
    # a config that is plain JSON data (str keys, lists) keeps the digest it had
    plain = {"config": {"__instance__": {"labels": {"0": "cat"}, "shape": [2, 3],
                                         "w": 0.5, "on": True, "none": None}},
             "env": {}, "image": None, "platform": "local"}
    assert config_digest(plain, Engine.hash_value) == json.loads(canonical_json(plain))


def _module(tmp_path, monkeypatch, name, text):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{name}.py").write_text(text)
    sys.modules.pop(name, None)
    return importlib.import_module(name)


_MODELS = """\
class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return x * self.k{extra}


def clean(x):
    return x + 1{extra}


def enrich(x):
    return x * 10


def fallback():
    return -1{extra}
"""


@component
def by_stage(models, x):
    return [models[i].apply(x) for i in sorted(models)]


@component
def run_stages(plan, x):
    for _, fn in plan.items():
        x = fn(x)
    return x


@component
def missing(table):
    return table["absent"]


def test_mappings_with_other_keys_count_the_code_of_what_they_hold(engine, tmp_path,
                                                                   monkeypatch):
    """A dict with int keys, an ``OrderedDict`` and a ``defaultdict`` were keyed by their
    pickle, which names user classes and functions without their code: after an edit of
    ``Scaler.apply``, ``clean`` or the default factory, the next run was served the old
    results."""
    mods = _module(tmp_path, monkeypatch, "s22_models", _MODELS.format(extra=""))

    @pipeline(name="s22_mapping_code")
    def p():
        return [by_stage(models={0: mods.Scaler(2), 1: mods.Scaler(3)}, x=1.0),
                run_stages(plan={1: mods.clean, 2: mods.enrich}, x=1),
                run_stages(plan=OrderedDict(clean=mods.clean, enrich=mods.enrich), x=2),
                missing(table=defaultdict(mods.fallback, {"present": 1}))]

    try:
        assert [x["outputs"]["result"] for x in p.run(engine=engine).value] == \
            [[2.0, 3.0], 20, 30, -1]
        (tmp_path / "s22_models.py").write_text(_MODELS.format(extra=" + 100"))
        importlib.reload(mods)
        assert [x["outputs"]["result"] for x in p.run(engine=engine).value] == \
            [[102.0, 103.0], 1020, 1030, 99]
    finally:
        sys.modules.pop("s22_models", None)


_FRESH_PROCESS = """\
import enum, sys
sys.path.insert(0, {root!r})
from twingraph import component, pipeline
from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage


class Color(enum.Enum):
    RED = 1
    BLUE = 2


@component
def weighted(weights):
    return sum(weights.values())


@component
def groups(g):
    return sum(len(v) for v in g.values())


@pipeline(name="s22_fresh_process")
def main():
    return [weighted(weights={{Color.RED: 0.5, Color.BLUE: 1.0}}),
            groups(g={{1: {{"alpha", "beta", "gamma", "delta"}}, 2: {{"x", "y", "z"}}}})]


eng = Engine(results=SQLiteStorage({db!r}),
             metadata=SQLMetadataStore("sqlite:///" + {meta!r}, create=True))
r = main.run(engine=eng)
print([x["outputs"]["result"] for x in r.value],
      sorted(t.cache_status for t in eng.metadata.get_tasks(r.run_id)))
eng.close()
"""


def test_mappings_of_enums_and_sets_keep_their_keys_in_a_new_process(tmp_path):
    """``{Color.RED: 0.5}`` (an enum of the script: pickled by value, with an id of each
    process's own) and ``{1: {"alpha", "beta"}}`` (a set's pickle follows the hash seed)
    had a new key in every process: nothing changed, and they ran again."""
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS.format(root=str(ROOT / "src"),
                                            db=str(tmp_path / "results.db"),
                                            meta=str(tmp_path / "meta.db")))
    outs = []
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed), timeout=120,
                             cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr
        outs.append(out.stdout.strip())
    assert outs[0] == "[1.5, 7] ['miss', 'miss']"
    assert outs[1:] == ["[1.5, 7] ['hit', 'hit']"] * 2


@component
def view(m):
    return [m.format, m.tolist()]


def test_memoryviews_of_the_same_bytes_in_other_formats_are_other_values(engine):
    """A memoryview was keyed by its bytes (and its type): a view of the same bytes cast to
    another format or shape was served the first one's result, in one run."""
    raw = bytes([1, 0, 0, 0, 2, 0, 0, 0])

    @pipeline(name="s22_memoryview")
    def p():
        m = memoryview(raw)
        return [view(m=m), view(m=m.cast("i")), view(m=m.cast("B", (2, 4)))]

    assert [x["outputs"]["result"] for x in p.run(engine=engine).value] == [
        ["B", [1, 0, 0, 0, 2, 0, 0, 0]],
        ["i", [1, 2]],
        ["B", [[1, 0, 0, 0], [2, 0, 0, 0]]]]


class Node:
    def __init__(self, name):
        self.name, self.back = name, None


@component
def size(m):
    return len(m)


def test_a_cycle_through_a_mapping_is_keyed_without_walking_for_ever(engine):
    """Mappings are walked pair by pair now (they were pickled whole, which handled a cycle):
    one that holds itself, directly, through a list or through an object, is walked once and
    then keyed by its pickle, as a cycle through objects is. (A plain dict or list holding
    itself fails before it is keyed, in the engine's search for futures: not tried here.)"""
    direct = OrderedDict(a=None)
    direct["a"] = direct
    through_list = OrderedDict(a=[])
    through_list["a"].append(through_list)
    node = Node("n")
    through_object = defaultdict(list, {1: node})
    node.back = through_object
    other = Node("o")
    int_keys = {0: other}
    other.back = [int_keys]

    @pipeline(name="s22_mapping_cycles")
    def p():
        return [size(m=direct), size(m=through_list), size(m=through_object),
                size(m=int_keys)]

    for _ in range(2):      # and the second run finds the first run's results
        done = []
        t = threading.Thread(target=lambda: done.append(p.run(engine=engine)), daemon=True)
        t.start()
        t.join(60)
        assert done, "keying the cyclic mappings never ended"
        assert [x["outputs"]["result"] for x in done[0].value] == [1, 1, 1, 1]
    statuses = [t.cache_status for t in engine.metadata.get_tasks(done[0].run_id)]
    assert statuses == ["hit"] * 4, statuses
