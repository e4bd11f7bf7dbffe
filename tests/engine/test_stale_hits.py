"""Memo keys that missed a change and served an old result (a review's stale hits): each
test runs a pipeline, changes what the result depends on, and runs it again.

``monkeypatch`` only puts ``tmp_path`` first on ``sys.path``, for the helper modules the tests
write there and edit between runs (as a user edits a file); nothing is patched."""
import dataclasses
import functools
import importlib
import sys

import numpy as np

from twingraph import BaseComponent, component, pipeline


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


def test_a_default_argument_that_is_a_user_object_is_part_of_the_version(engine, tmp_path,
                                                                          monkeypatch):
    """``def scaled(x, cfg=DEFAULT)`` with ``DEFAULT = Cfg(scale=2)`` edited to ``scale=3``:
    the default was described by its class only, and the old result came back."""
    text = ("import dataclasses\n"
            "from twingraph import component, pipeline\n"
            "@dataclasses.dataclass\n"
            "class Cfg:\n"
            "    scale: int\n"
            "DEFAULT = Cfg(scale={scale})\n"
            "@component\n"
            "def scaled(x, cfg=DEFAULT):\n"
            "    return x * cfg.scale\n"
            "@pipeline(name='default_object')\n"
            "def flow():\n"
            "    return scaled(x=5)\n")
    mod = _module(tmp_path, monkeypatch, "stale_default_object", text.format(scale=2))
    try:
        assert mod.flow.run(engine=engine).value["outputs"]["result"] == 10
        (tmp_path / "stale_default_object.py").write_text(text.format(scale=3))
        mod = importlib.reload(mod)
        assert mod.flow.run(engine=engine).value["outputs"]["result"] == 15
    finally:
        sys.modules.pop("stale_default_object", None)
