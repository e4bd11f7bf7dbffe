"""The same value has the same content hash in every process (``twingraph._stable_pickle``).

The tests run real interpreters under different ``PYTHONHASHSEED`` values: a set's iteration
order follows the seed, and cloudpickle gave a class pickled by value a random id in every
process. Before, a pickled result holding either had a new content hash in each process, and
the tasks keyed on it missed in every new run. The last test guards decoding, which did not
change: values stored before still load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cloudpickle

from twingraph.serialization import decode

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "tests" / "resources"

IMPORTABLE = '''
import dataclasses


@dataclasses.dataclass
class Tagged:                   # importable: pickled by reference
    name: str
    tags: set


class TagSet(set):
    pass
'''

PIPE_TYPES = '''
import dataclasses
import enum


@dataclasses.dataclass
class Box:                      # loaded by path: pickled by value
    tags: set
    n: int

    def kinds(self, tag):
        return tag in {"alpha", "beta", "gamma", "delta"}     # a frozenset constant


class Left:                     # Left and Right name each other
    def __init__(self, n):
        self.n = n

    def other(self):
        return Right(self.n)


class Right:
    def __init__(self, n):
        self.n = n

    def other(self):
        return Left(self.n)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"
'''

HASHES = '''
import collections, json, sys
import cloudpickle
sys.path.insert(0, sys.argv[1])
from twingraph.cli.loading import load_module
from twingraph.core.hashing import digest_json, digest_value
from twingraph.engine.engine import Engine
from twingraph.serialization import decode, encode
import importable
pipe = load_module(sys.argv[1] + "/pipe_types.py")


class MainThing:                # defined in __main__: pickled by value
    def __init__(self, tags):
        self.tags = tags


WORDS = [f"w{i}" for i in range(24)]
values = {
    "set": set(WORDS),
    "frozenset": frozenset(WORDS),
    "dict_of_sets": {"tags": set(WORDS), "more": {"x": frozenset(WORDS)}},
    "dataclass_with_set": importable.Tagged("t", set(WORDS)),
    "mixed_set": {1, "a", b"b", 2.5, None, (1, "x"), frozenset({"p", "q", "r"})},
    "set_of_tuples": {(w, i) for i, w in enumerate(WORDS)},
    "set_of_frozensets": {frozenset({w, w + "!"}) for w in WORDS},
    "set_subclass": importable.TagSet(WORDS),
    "main_class": MainThing(set(WORDS)),
    "pipeline_dataclass": pipe.Box(set(WORDS), 3),
    "pipeline_classes_naming_each_other": [pipe.Right(1), pipe.Left(2)],
    "pipeline_enum": pipe.Color.BLUE,
    "set_of_pipeline_instances": {pipe.Color.RED, pipe.Color.BLUE},
}
order = list(values)
if sys.argv[2] == "reversed-after-loading":
    order.reverse()
    # What a process worker's replies do: load classes by value into this process, with
    # plain cloudpickle (it sets their state on the classes it finds).
    cloudpickle.loads(cloudpickle.dumps(list(values.values())))
out = {}
for key in order:
    enc = encode(values[key])
    out[key] = [enc.encoding, enc.content_hash]
    back = decode(enc.to_bytes(), enc.encoding)    # loads back in this process too
    if key not in ("main_class", "pipeline_dataclass", "pipeline_classes_naming_each_other"):
        assert back == values[key], key
# Argument digests: a dict with keys that are not str is hashed whole, through the pickle.
for key, value in {"int_keys": {1: set(WORDS)},
                   "defaultdict": collections.defaultdict(set, {"k": set(WORDS)})}.items():
    out["digest:" + key] = digest_json(digest_value(value, None, str, Engine.hash_value)).decode()
print(json.dumps(out))
'''


def _python(args: list[str], seed: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {}), "PYTHONHASHSEED": seed}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), full_env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                         env=full_env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_pickled_values_hash_alike_under_any_hash_seed(tmp_path):
    """Sets, frozensets, sets nested in dicts and dataclasses, sets of mixed types, a subclass
    of set, instances of classes pickled by value (``__main__``, a pipeline file, classes that
    name each other, an enum), and argument digests hashed through the pickle: equal content
    hashes in processes with other hash seeds, which pickled them in another order after
    loading those classes from pickles."""
    (tmp_path / "importable.py").write_text(IMPORTABLE)
    (tmp_path / "pipe_types.py").write_text(PIPE_TYPES)
    (tmp_path / "hashes.py").write_text(HASHES)
    script = str(tmp_path / "hashes.py")
    first = json.loads(_python([script, str(tmp_path), "forward"], seed="1"))
    for seed in ("2", "3"):
        other = json.loads(_python([script, str(tmp_path), "reversed-after-loading"], seed=seed))
        assert other.keys() == first.keys()
        differ = sorted(k for k in first if first[k] != other[k])
        assert not differ, f"content hashes differ between processes for {differ}"
    assert first["set"][0] == "pickle"


BY_VALUE = '''
class Box:
    LIMIT = {limit}

    def describe(self):
        return "{version}"
'''

DESCRIBE = '''
import json, sys
from pathlib import Path
from twingraph.cli.loading import load_module
from twingraph.serialization import decode, encode
pipe = load_module(sys.argv[1])
enc = encode(pipe.Box())
out = {"hash": enc.content_hash}
if sys.argv[2] == "save":
    Path(sys.argv[3]).write_bytes(enc.to_bytes())
else:                           # load what another version of the file stored
    old = decode(Path(sys.argv[3]).read_bytes(), "pickle")
    out["loaded_describes"] = old.describe()
    out["loaded_is_this_files_class"] = type(old) is pipe.Box
print(json.dumps(out))
'''


def test_a_class_by_value_has_one_id_per_definition(tmp_path):
    """A class loaded from a file has the same bytes in every process, so the same content
    hash; a changed definition has other bytes, and a value stored by the old definition
    loads as the old class in a process that has the new one (the id that maps a pickle to
    a class already in the process is never shared by two definitions)."""
    script = tmp_path / "describe.py"
    script.write_text(DESCRIBE)
    v1, v2 = tmp_path / "v1" / "boxes.py", tmp_path / "v2" / "boxes.py"
    for path, version, limit in ((v1, "v1", 3), (v2, "v2", 4)):
        path.parent.mkdir()
        path.write_text(BY_VALUE.format(version=version, limit=limit))
    stored = tmp_path / "stored.pickle"
    first = json.loads(_python([str(script), str(v1), "save", str(stored)], seed="1"))
    again = json.loads(_python([str(script), str(v1), "save", str(tmp_path / "x")], seed="2"))
    assert again["hash"] == first["hash"]
    changed = json.loads(_python([str(script), str(v2), "load", str(stored)], seed="1"))
    assert changed["hash"] != first["hash"]
    assert changed["loaded_describes"] == "v1"
    assert changed["loaded_is_this_files_class"] is False


RUN = '''
import json, sys
from twingraph.cli.loading import load_module
from twingraph.runtime import default_engine
flow = load_module(sys.argv[1])           # by path, as `twingraph run FILE.py`: classes by value
engine = default_engine()                 # at TWINGRAPH_HOME
r = flow.pickled_results.run(engine=engine, n=20)
engine.recorder.flush()
tasks = engine.metadata.get_tasks(r.run_id)
print(json.dumps({"state": r.state.value, "value": [v["outputs"]["result"] for v in r.value],
                  "tasks": {t.node_id: [t.cache_status, t.content_hash] for t in tasks}}))
engine.close()
'''


def test_a_rerun_in_a_new_process_hits_downstream_of_pickled_results(tmp_path):
    """Producers that always run (``cache=False``) return sets and instances of the pipeline
    file's classes; their consumers are memoized. A second process, another hash seed, runs
    the unchanged pipeline: every producer's result has the content hash it had, and every
    consumer hits."""
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {"TWINGRAPH_HOME": str(tmp_path / "home")}
    pipeline_file = str(RESOURCES / "pickled_results.py")
    first = json.loads(_python([str(script), pipeline_file], seed="1", cwd=tmp_path, env=env))
    second = json.loads(_python([str(script), pipeline_file], seed="2", cwd=tmp_path, env=env))
    assert first["state"] == second["state"] == "SUCCESS"
    assert first["value"] == second["value"] == [20 + 20 + 3, 40, 22]
    producers = ("tag_dict-0", "basket-0", "pair-0")
    consumers = ("count_tags-0", "basket_total-0", "pair_total-0")
    for node in producers:
        assert first["tasks"][node][0] == second["tasks"][node][0] == "disabled"
        assert second["tasks"][node][1] == first["tasks"][node][1], node
    assert [first["tasks"][n][0] for n in consumers] == ["miss"] * 3
    assert [second["tasks"][n][0] for n in consumers] == ["hit"] * 3


def test_values_stored_before_still_decode():
    """Bytes written by plain cloudpickle (sets in any order, a class by value under a random
    id) decode as they did: decoding did not change."""

    class Local:
        def __init__(self, tags):
            self.tags = tags

    value = {"tags": {"b", "a", "c"}, "obj": Local(frozenset({"x", "y"}))}
    back = decode(cloudpickle.dumps(value, protocol=5), "pickle")
    assert back["tags"] == {"a", "b", "c"}
    assert back["obj"].tags == frozenset({"x", "y"})
    assert type(back["obj"]).__qualname__ == Local.__qualname__
