"""Memo keys that missed a change and served an old result (a review's stale hits): each
test runs a pipeline, changes what the result depends on, and runs it again.

``monkeypatch`` only puts ``tmp_path`` first on ``sys.path``, for the helper modules the tests
write there and edit between runs (as a user edits a file); nothing is patched."""
import collections
import dataclasses
import datetime
import decimal
import functools
import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from twingraph import BaseComponent, component, pipeline

ROOT = Path(__file__).resolve().parents[2]


class Name(str):
    pass


class Cfg(dict):
    pass


class Items(list):
    pass


@component
def greet(name):
    return f"hello {name}"


@component
def total(cfg):
    return sum(cfg.values()) if isinstance(cfg, dict) else sum(cfg)


def test_arguments_that_subclass_built_in_types_are_keyed_by_their_value(engine):
    """``Name("BOB")`` was served ``Name("ALICE")``'s result, in the same run: an instance of
    a user class was keyed by its attributes (none) and its class's code, not by the str."""
    @pipeline(name="builtin_subclasses")
    def p():
        return [greet(name=Name("ALICE")), greet(name=Name("BOB")),
                total(cfg=Cfg(a=1)), total(cfg=Cfg(a=40)),
                total(cfg=Items([1, 2])), total(cfg=Items([3, 4]))]

    r = p.run(engine=engine)
    assert [x["outputs"]["result"] for x in r.value] == \
        ["hello ALICE", "hello BOB", 1, 40, 3, 7]


def _module(tmp_path, monkeypatch, name, text):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{name}.py").write_text(text)
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_a_partial_of_an_edited_helper_is_a_new_key(engine, tmp_path, monkeypatch):
    """``functools.partial(helpers.scale, factor=2)`` as an argument was keyed by its pickle,
    which names ``scale`` without its code: editing ``scale`` kept the key."""
    helpers = _module(tmp_path, monkeypatch, "stale_partial_helpers",
                      "def scale(x, factor):\n    return x * factor\n")

    @component
    def apply(fn, x):
        return fn(x)

    @pipeline(name="partial_of_helper")
    def p():
        return apply(fn=functools.partial(helpers.scale, factor=2), x=5)

    try:
        assert p.run(engine=engine).value["outputs"]["result"] == 10
        (tmp_path / "stale_partial_helpers.py").write_text(
            "def scale(x, factor):\n    return x * factor + 100\n")
        importlib.reload(helpers)
        assert p.run(engine=engine).value["outputs"]["result"] == 110
    finally:
        sys.modules.pop("stale_partial_helpers", None)


@dataclasses.dataclass
class Params:
    offset: float


class Shift(BaseComponent):
    def __init__(self, base, params):
        super().__init__()
        self.base, self.params = base, params

    def execute(self, x):
        return (self.base + x + self.params.offset).tolist()


def test_component_instances_holding_arrays_and_dataclasses_are_keyed_by_them(engine):
    """Attributes that are not plain data (an array, a dataclass) were keyed by their type:
    the second instance was served the first's result."""
    @pipeline(name="instance_data")
    def p():
        a = Shift(np.array([0, 0]), Params(1.0))(x=np.array([0, 1]))
        b = Shift(np.array([10, 10]), Params(5.0))(x=np.array([0, 1]))
        c = Shift(np.zeros(20_000), Params(0.0))(x=np.zeros(20_000))
        d = Shift(np.ones(20_000), Params(0.0))(x=np.zeros(20_000))
        return a, b, c, d

    a, b, c, d = p.run(engine=engine).value
    assert a["outputs"]["result"] == [1.0, 2.0]
    assert b["outputs"]["result"] == [15.0, 16.0]
    assert c["outputs"]["result"][0] == 0.0 and d["outputs"]["result"][0] == 1.0


class Ring:
    def __init__(self, label):
        self.label, self.next, self.prev = label, None, None


class AttrDict(dict):
    pass


class Window(collections.deque):
    pass


class Day(datetime.date):
    pass


class Amount(decimal.Decimal):
    pass


@component
def describe(x):
    return repr(x)


def test_library_subclass_arguments_are_keyed_by_their_value(engine):
    """A ``deque``, ``date`` or ``Decimal`` subclass keeps its value outside its attributes:
    keyed by them (none), four different values shared one key in one run."""
    @pipeline(name="library_subclasses")
    def p():
        return [describe(x=Window([1, 2])), describe(x=Window([3])),
                describe(x=Day(2024, 1, 1)), describe(x=Day(2025, 6, 30)),
                describe(x=Amount("1.5")), describe(x=Amount("2.5"))]

    out = [x["outputs"]["result"] for x in p.run(engine=engine).value]
    assert len(set(out)) == 6, out


def test_cyclic_objects_as_arguments_are_keyed_without_walking_for_ever(engine):
    """A ring of objects, and a tree of dict subclasses whose nodes point at their parent:
    each node was walked again at every level, in exponential time (a run that never ended)."""
    a, b = Ring("a"), Ring("b")
    a.next, a.prev, b.next, b.prev = b, b, a, a
    root = AttrDict(name="root")
    node = root
    for depth in range(30):
        kids = [AttrDict(name=f"{depth}-{i}", parent=node) for i in range(2)]
        node["children"] = kids
        node = kids[0]

    @component
    def name_of(x):
        return x["name"] if isinstance(x, dict) else x.label

    @pipeline(name="cyclic_arguments")
    def p():
        return name_of(x=a), name_of(x=root)

    done = []
    t = threading.Thread(target=lambda: done.append(p.run(engine=engine)), daemon=True)
    t.start()
    t.join(30)
    assert done, "keying the cyclic arguments never ended"
    assert [x["outputs"]["result"] for x in done[0].value] == ["a", "root"]


def test_a_component_holding_a_set_of_strings_keeps_its_key_in_a_new_process(tmp_path):
    """Attributes that are not plain data are walked as arguments are: a set of 20,000 words
    (more than the plain walk reads) hashed by its pickle, whose order follows the process's
    hash seed, was a new key in every process."""
    script = (
        "import sys\n"
        "sys.path.insert(0, %r)\n"
        "from tests.engine.test_stale_hits import Vocab\n"
        "print(Vocab({f'w{i}' for i in range(20_000)}).spec.config['__attributes__'])\n"
        % str(ROOT))
    seen = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed), timeout=120)
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout)
    assert len(seen) == 1


class Vocab(BaseComponent):
    def __init__(self, words):
        super().__init__()
        self.words = words

    def execute(self, text):
        return [w for w in text.split() if w in self.words]


class LazyClient:
    """Connects on first use; until then any attribute it lacks raises (as some clients do)."""
    __slots__ = ("_conn", "url")

    def __init__(self, url):
        self.url = url

    def __getattr__(self, name):
        raise ConnectionError(f"not connected: {name}")


def test_an_argument_whose_getattr_raises_is_still_keyed(engine):
    """Reading its attributes went through its ``__getattr__``, whose ConnectionError failed
    the task before it started."""
    @component
    def where(client):
        return client.url

    @pipeline(name="lazy_client_argument")
    def p():
        return where(client=LazyClient("a")), where(client=LazyClient("b"))

    r = p.run(engine=engine)
    assert [x["outputs"]["result"] for x in r.value] == ["a", "b"]


def test_a_helpers_decorator_arguments_are_part_of_the_version(engine, tmp_path, monkeypatch):
    """``@scaled(2)`` edited to ``@scaled(3)`` on a helper: decorator lines were left out of
    every function's source (for ``@component``'s settings), and the old result came back."""
    text = ("import functools\n"
            "class scaled:\n"
            "    def __init__(self, k):\n"
            "        self.k = k\n"
            "    def __call__(self, f):\n"
            "        @functools.wraps(f)\n"
            "        def inner(x):\n"
            "            return self.k * f(x)\n"
            "        return inner\n"
            "@scaled({k})\n"
            "def helper(x):\n"
            "    return x + 1\n")
    helpers = _module(tmp_path, monkeypatch, "stale_decorated_helpers", text.format(k=2))

    @component
    def use(x):
        return helpers.helper(x)

    @pipeline(name="decorated_helper")
    def p():
        return use(x=4)

    try:
        assert p.run(engine=engine).value["outputs"]["result"] == 10
        (tmp_path / "stale_decorated_helpers.py").write_text(text.format(k=3))
        importlib.reload(helpers)
        assert p.run(engine=engine).value["outputs"]["result"] == 15
    finally:
        sys.modules.pop("stale_decorated_helpers", None)


_MODELS = ("class Model:\n"
           "    def __init__(self, w):\n"
           "        self.w = w\n"
           "\n"
           "    def predict(self, x):\n"
           "        return self.w * x{extra}\n")
# A producer of a Model: pickled by reference, the same bytes after Model is edited.
_TRAIN = ("@component\n"
          "def train():\n"
          "    return Model(2)\n"
          "\n")
_FLOW = ("from __future__ import annotations\n"
         "import typing\n"
         "from twingraph import component, pipeline\n"
         "import stale_models\n"
         "from stale_models import Model\n"
         "\n" + _TRAIN +
         "@component\n"
         "def evaluate(model: Model, x: int):\n"
         "    return model.predict(x)\n"
         "\n"
         "@component\n"
         "def evaluate_all(models: 'list[stale_models.Model] | None', x: int):\n"
         "    return [m.predict(x) for m in models]\n"
         "\n"
         "M = typing.TypeVar('M', bound=Model)\n"
         "\n"
         "@component\n"
         "def evaluate_bound(model: M, x: int):\n"
         "    return model.predict(x)\n"
         "\n"
         "from twingraph import BaseComponent\n"
         "class Evaluate(BaseComponent):\n"
         "    def execute(self, model: Model, x: int):\n"
         "        return model.predict(x)\n"
         "\n"
         "@pipeline(name='annotated_consumer')\n"
         "def p():\n"
         "    m = train()['outputs']['result']\n"
         "    return [evaluate(model=m, x=5)['outputs']['result'],\n"
         "            evaluate_all(models=[m], x=1)['outputs']['result'],\n"
         "            evaluate_bound(model=m, x=2)['outputs']['result'],\n"
         "            Evaluate()(model=m, x=3)['outputs']['result']]\n"
         "\n"
         "print(p())\n")


def test_a_consumer_annotated_with_an_imported_class_reruns_when_the_class_is_edited(tmp_path):
    """``evaluate(model: Model)`` calls ``model.predict``; editing ``predict`` in the imported
    module re-ran ``train`` (it builds a Model), whose pickle names the class without its code:
    same bytes, so ``evaluate`` was an early cut-off hit with the old ``predict``'s result. The
    annotation now puts ``Model``'s code into ``evaluate``'s version. Each run is a new process,
    as a user's runs are."""
    (tmp_path / "stale_models.py").write_text(_MODELS.format(extra=""))
    (tmp_path / "stale_flow.py").write_text(_FLOW)
    assert _run_file(tmp_path, "stale_flow.py") == "[10, [2], 4, 6]"
    (tmp_path / "stale_models.py").write_text(_MODELS.format(extra=" + 100"))
    assert _run_file(tmp_path, "stale_flow.py") == "[110, [102], 104, 106]"


def _run_file(root, name):
    """Run ``root/name`` in a new process on the embedded default under ``root/home``; what
    it printed."""
    env = dict(os.environ, TWINGRAPH_HOME=str(root / "home"),
               PYTHONPATH=os.pathsep.join([str(root), str(ROOT / "src")]))
    out = subprocess.run([sys.executable, name], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


_SETTINGS = ("REGISTRY = []\n"
             "class Cfg:\n"
             "    def __init__(self, scale):\n"
             "        self.scale = scale\n"
             "        REGISTRY.append(self)          # another container holding each one\n"
             "\n"
             "DEFAULT = Cfg(scale={scale})\n"
             "SCALE = {scale}\n"
             "ENV = {env!r}\n"
             "CONFIGS = {{'prod': Cfg(scale={scale}), 'dev': Cfg(scale={scale} + 10)}}\n")
_DEFAULTS_FLOW = ("from twingraph import component, pipeline\n"
                  "import stale_settings\n"
                  "from stale_settings import DEFAULT\n"
                  "\n"
                  "@component\n"
                  "def imported_default(x, cfg=DEFAULT):\n"
                  "    return x * cfg.scale\n"
                  "\n"
                  "@component\n"
                  "def attribute_default(x, *, cfg=stale_settings.DEFAULT):\n"
                  "    return x * cfg.scale + 1\n"
                  "\n"
                  "def make():\n"
                  "    c = stale_settings.DEFAULT\n"
                  "    @component(name='closure_cell')\n"
                  "    def closure_cell(x):\n"
                  "        return x * c.scale + 2\n"
                  "    return closure_cell\n"
                  "\n"
                  "@component\n"
                  "def dict_entry(x, cfg=stale_settings.CONFIGS['prod']):\n"
                  "    return x * cfg.scale + 3\n"
                  "\n"
                  "@component\n"
                  "def built_in_place(x, cfg=stale_settings.Cfg(scale=stale_settings.SCALE)):\n"
                  "    return x * cfg.scale + 4\n"
                  "\n"
                  "@component\n"
                  "def selected(x, cfg=stale_settings.CONFIGS[stale_settings.ENV]):\n"
                  "    return x * cfg.scale + 5\n"
                  "\n"
                  "in_lambda = component(lambda x, cfg=stale_settings.Cfg(\n"
                  "    scale=stale_settings.SCALE): x * cfg.scale + 6, name='in_lambda')\n"
                  "\n"
                  "@pipeline(name='user_object_defaults')\n"
                  "def p():\n"
                  "    return [f(x=5)['outputs']['result']\n"
                  "            for f in (imported_default, attribute_default, make(),\n"
                  "                      dict_entry, built_in_place, selected, in_lambda)]\n"
                  "\n"
                  "print(p())\n")


def test_a_default_that_is_a_user_object_bound_in_a_module_is_keyed_by_its_statement(tmp_path):
    """``cfg=DEFAULT`` with ``DEFAULT = Cfg(scale=2)`` in an imported settings module (also as
    ``cfg=settings.DEFAULT``, as a closure cell, as an entry of a module-level dict also held by
    a registry, selected by a module constant, and built in the default from a module
    constant, in a ``def`` or a lambda) was described by its class only: editing the
    statement to ``scale=3`` (or the selector) served the old results."""
    (tmp_path / "stale_settings.py").write_text(_SETTINGS.format(scale=2, env="prod"))
    (tmp_path / "stale_defaults.py").write_text(_DEFAULTS_FLOW)
    assert _run_file(tmp_path, "stale_defaults.py") == "[10, 11, 12, 13, 14, 15, 16]"
    (tmp_path / "stale_settings.py").write_text(_SETTINGS.format(scale=3, env="prod"))
    assert _run_file(tmp_path, "stale_defaults.py") == "[15, 16, 17, 18, 19, 20, 21]"
    (tmp_path / "stale_settings.py").write_text(_SETTINGS.format(scale=3, env="dev"))
    assert _run_file(tmp_path, "stale_defaults.py") == "[15, 16, 17, 18, 19, 70, 21]"


class _Unforced:
    """A lazy proxy: asking its class (``isinstance``) or any attribute forces it, which here
    fails, as a proxy whose connection is down does."""
    @property
    def __class__(self):
        raise ConnectionError("the proxy was forced")

    def __getattr__(self, name):
        raise ConnectionError("the proxy was forced")


LAZY = _Unforced()


def test_a_lazy_proxy_default_is_not_forced_by_the_version():
    from twingraph.core.codeversion import code_version

    def uses(x, client=LAZY):
        return x

    assert len(code_version(uses)) == 16


def test_a_recursive_string_alias_in_an_annotation_is_walked_once(tmp_path, monkeypatch):
    """``Tree = "dict[str, Tree] | list[Tree] | Leaf"`` was expanded at every level, down to
    the walk's depth limit: seconds for one version."""
    mod = _module(tmp_path, monkeypatch, "stale_recursive_alias",
                  "class Leaf:\n    pass\n"
                  "Tree = 'dict[str, Tree] | list[Tree] | tuple[Tree, Tree, Tree, Tree] "
                  "| set[Tree] | Leaf'\n"
                  "def f(t: 'Tree'):\n    return t\n")
    from twingraph.core.codeversion import _annotated_classes
    done = []
    t = threading.Thread(target=lambda: done.append(_annotated_classes(mod.f)), daemon=True)
    t.start()
    t.join(5)
    try:
        assert done and [c.__name__ for c in done[0]] == ["Leaf"]
    finally:
        sys.modules.pop("stale_recursive_alias", None)


_MORE_CONSUMERS = ("import collections.abc\n"
                   "from twingraph import BaseComponent, component, pipeline\n"
                   "from stale_models import Model\n"
                   "\n" + _TRAIN +
                   "@component\n"
                   "def use(fn: 'collections.abc.Callable[[Model], int]', m):\n"
                   "    return fn(m)\n"
                   "\n"
                   "def call_predict(m):\n"
                   "    return m.predict(1)\n"
                   "\n"
                   "class EvalBase(BaseComponent):\n"
                   "    def execute(self, model: Model, x: int):\n"
                   "        return model.predict(x)\n"
                   "\n"
                   "class EvaluateInherited(EvalBase):\n"
                   "    name = 'evaluate_inherited'\n"
                   "\n"
                   "def helper(m: Model, x):\n"
                   "    return m.predict(x)\n"
                   "\n"
                   "class Tools:\n"
                   "    run = staticmethod(helper)\n"
                   "\n"
                   "@component\n"
                   "def evaluate_via_helper(model, x: int):\n"
                   "    assert Tools.run is not None\n"
                   "    return helper(model, x)\n"
                   "\n"
                   "@pipeline(name='more_annotated_consumers')\n"
                   "def p():\n"
                   "    m = train()['outputs']['result']\n"
                   "    return [use(fn=call_predict, m=m)['outputs']['result'],\n"
                   "            EvaluateInherited()(model=m, x=3)['outputs']['result'],\n"
                   "            evaluate_via_helper(model=m, x=4)['outputs']['result']]\n"
                   "\n"
                   "print(p())\n")


def test_consumers_annotated_through_abc_generics_bases_and_helpers_rerun(tmp_path):
    """Regressions of the first fixes' review: a ``collections.abc.Callable[[Model], int]``
    annotation (its type lives in ``_collections_abc``), an ``execute`` inherited from a user
    base class, and a plain helper that a class also holds (``staticmethod(helper)``: its
    annotations were dropped as a method's, depending on walk order)."""
    (tmp_path / "stale_models.py").write_text(_MODELS.format(extra=""))
    (tmp_path / "more_consumers.py").write_text(_MORE_CONSUMERS)
    assert _run_file(tmp_path, "more_consumers.py") == "[2, 6, 8]"
    (tmp_path / "stale_models.py").write_text(_MODELS.format(extra=" + 100"))
    assert _run_file(tmp_path, "more_consumers.py") == "[102, 106, 108]"


class _A:
    pass


class _B:
    pass


class _C:
    pass


def test_the_same_annotation_names_the_same_classes_every_time():
    """``get_args`` builds a new list per call; the walk's "seen" set held their ids, and a
    freed id reused later made classes vanish from one function's answer to the next."""
    from collections.abc import Callable as Fn
    from typing import Callable

    from twingraph.core.codeversion import _annotated_classes

    def g1(x: tuple[Callable[[_A], None], Callable[[_B], None], Callable[[_C], None]]):
        return x

    def g2(x: list[Fn[[_A], None] | Fn[[_B], None] | Fn[[_C], None]]):
        return x

    for f in (g1, g2) * 5:
        assert [c.__name__ for c in _annotated_classes(f)] == ["_A", "_B", "_C"]
