"""code_version: what a component's code version sees (constants, helpers reached through user
modules, classes, closures, defaults) and what it must never depend on (memory addresses,
hash seeds, runtime contents of mutable globals). Modules are real files in ``tmp_path``,
imported fresh under unique names."""
from __future__ import annotations

import sys

import pytest

from twingraph.core.codeversion import code_version

@pytest.fixture
def load(user_modules):
    """Modules written to files and imported fresh (``tests/conftest.py``)."""
    return user_modules


# --- regressions: each of these was a stale memo hit with the old code version -----------------

CONST = """
FACTOR = {factor}

def scale(x):
    return x * FACTOR
"""


def test_module_constant_is_part_of_the_version(load):
    a = load(CONST.replace("{factor}", "2"))
    b = load(CONST.replace("{factor}", "5"))
    a2 = load(CONST.replace("{factor}", "2"))
    assert code_version(a.scale) != code_version(b.scale)
    assert code_version(a.scale) == code_version(a2.scale)      # module names are not hashed


def test_computed_constant_counts_by_value_not_by_text(load):
    a = load("FACTOR = 2\ndef f(x):\n    return x * FACTOR\n")
    b = load("FACTOR = 1 + 1\ndef f(x):\n    return x * FACTOR\n")
    c = load("FACTOR = int('5')\ndef f(x):\n    return x * FACTOR\n")
    assert code_version(a.f) == code_version(b.f)
    assert code_version(a.f) != code_version(c.f)


def test_dict_and_list_constants_are_part_of_the_version(load):
    src = "WEIGHTS = {w}\nTABLE = {t}\ndef f(k):\n    return WEIGHTS[k] * TABLE[0]\n"
    base = load(src.format(w='{"a": 1, "b": 2}', t="[1, 2]"))
    reordered = load(src.format(w='{"b": 2, "a": 1}', t="[1, 2]"))
    w_changed = load(src.format(w='{"a": 1, "b": 3}', t="[1, 2]"))
    t_changed = load(src.format(w='{"a": 1, "b": 2}', t="[7, 2]"))
    v = code_version(base.f)
    assert code_version(w_changed.f) != v
    assert code_version(t_changed.f) != v
    assert code_version(reordered.f) != v       # mutable containers: by their definition text
    tup = "T = {t}\ndef f(k):\n    return T[k]\n"  # immutable containers: by value
    assert code_version(load(tup.format(t="(1, 2)")).f) == code_version(
        load(tup.format(t="(1,  2)")).f)
    assert code_version(load(tup.format(t="(1, 2)")).f) != code_version(
        load(tup.format(t="(1, 3)")).f)


HELPER = """
def helper(x):
    return x + {inc}
"""

USES_HELPER_MODULE = """
import {h} as helpers

def f(x):
    return helpers.helper(x) * 2
"""


def test_helper_called_through_an_imported_user_module(load):
    a = load(USES_HELPER_MODULE, h=HELPER.replace("{inc}", "1"))
    b = load(USES_HELPER_MODULE, h=HELPER.replace("{inc}", "2"))
    same = load(USES_HELPER_MODULE, h=HELPER.replace("{inc}", "1"))
    assert code_version(a.f) != code_version(b.f)
    assert code_version(a.f) == code_version(same.f)


def test_nested_modules_local_imports_and_module_constants(load):
    helper = "STEP = {step}\ndef helper(x):\n    return x + STEP\n"
    local_import = "def f(x):\n    import {h}\n    return {h}.helper(x)\n"
    from_import = "def f(x):\n    from {h} import helper\n    return helper(x)\n"
    attr_const = "import {h} as hm\ndef f(x):\n    return x + hm.STEP\n"
    for src in (local_import, from_import, attr_const):
        a = load(src, h=helper.replace("{step}", "1"))
        b = load(src, h=helper.replace("{step}", "3"))
        assert code_version(a.f) != code_version(b.f), src


def test_rebinding_a_helper_on_the_module_changes_the_version(load):
    m = load(USES_HELPER_MODULE, h=HELPER.replace("{inc}", "1"))
    v1 = code_version(m.f)
    old = m.helpers.helper
    m.helpers.helper = lambda x: x - 1
    try:
        assert code_version(m.f) != v1
    finally:
        m.helpers.helper = old
    assert code_version(m.f) == v1


CLASS = """
class Scaler:
    RATE = {rate}

    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return x * self.k {tweak}

def f(x):
    return Scaler(2).apply(x) + Scaler.RATE
"""


def test_user_class_source_and_class_attributes_are_part_of_the_version(load):
    base = load(CLASS.format(rate=1, tweak=""))
    body = load(CLASS.format(rate=1, tweak="+ 1"))
    rate = load(CLASS.format(rate=7, tweak=""))
    same = load(CLASS.format(rate=1, tweak=""))
    v = code_version(base.f)
    assert code_version(body.f) != v
    assert code_version(rate.f) != v
    assert code_version(same.f) == v


def test_class_in_a_helper_module_and_its_base_class(load):
    lib = """
    class Base:
        def step(self, x):
            return x + {inc}

    class Child(Base):
        pass
    """
    main = "import {lib} as lib\ndef f(x):\n    return lib.Child().step(x)\n"
    a = load(main, lib=lib.replace("{inc}", "1"))
    b = load(main, lib=lib.replace("{inc}", "2"))
    assert code_version(a.f) != code_version(b.f)


FACTORY = """
def make(k):
    def mul(x):
        return x * k
    return mul
"""


def test_closure_cells_are_part_of_the_version(load):
    m = load(FACTORY)
    assert code_version(m.make(2)) != code_version(m.make(3))
    assert code_version(m.make(2)) == code_version(m.make(2))
    assert code_version(m.make({"a": 1})) != code_version(m.make({"a": 2}))


def test_default_values_are_part_of_the_version(load):
    src = "K = {k}\ndef f(x, k=K):\n    return x * k\n"
    assert code_version(load(src.format(k=2)).f) != code_version(load(src.format(k=3)).f)


# --- properties the new walk must keep -----------------------------------------------------------

def test_default_repr_objects_never_enter_the_hash(load):
    src = """
    class Thing:
        pass

    SENTINEL = object()
    THING = Thing()

    def make():
        obj = object()
        def f(x):
            return (x, obj, SENTINEL, THING)
        return f
    """
    a, b = load(src), load(src)
    assert code_version(a.make()) == code_version(b.make())    # different addresses


def test_runtime_contents_of_a_mutable_global_are_not_part_of_the_version(load):
    m = load("calls = []\n_cache = {}\ndef f(x):\n    calls.append(x)\n"
             "    return _cache.setdefault(x, x * 2)\n")
    v = code_version(m.f)
    m.f(1)
    m.f(2)
    assert m.calls == [1, 2]
    assert code_version(m.f) == v


def test_cycles_terminate(load):
    a = load("""
    import {other} as other
    LOOP = []
    LOOP.append(LOOP)

    def ping(n):
        return pong(n - 1) if n else other.back(n) + len(LOOP)

    def pong(n):
        return ping(n)
    """, other="import sys\ndef back(n):\n    return back(n)\n")
    sys.modules[a.other.__name__].me = sys.modules[a.other.__name__]
    assert len(code_version(a.ping)) == 16
    assert code_version(a.ping) == code_version(a.ping)


def test_library_code_is_named_not_hashed(load):
    m = load("import json\nfrom os.path import join\ndef f(x):\n"
             "    return json.dumps(join('a', x))\n")
    assert len(code_version(m.f)) == 16


def test_base_component_class_follows_its_module_constants(load):
    src = """
    from twingraph import BaseComponent
    LIMIT = {limit}

    class Clip(BaseComponent):
        def execute(self, x, **kwargs):
            return {"y": min(x, LIMIT)}
    """
    a = load(src.replace("{limit}", "1"))
    b = load(src.replace("{limit}", "2"))
    assert code_version(a.Clip) != code_version(b.Clip)


def test_lambdas_on_one_line_differ(load):
    m = load("A, B = (lambda x: x + 1), (lambda x: x + 2)\n")
    assert code_version(m.A) != code_version(m.B)


def test_the_engine_computes_it_once_per_component(monkeypatch):
    import twingraph.dsl.component as comp_mod
    from twingraph import component

    calls = []
    real, real_deps = comp_mod.code_version, comp_mod.version_and_deps

    def counting(fn, **kw):
        calls.append(kw.get("values", True))
        return real(fn, **kw)

    def counting_deps(fn):          # the version, with the bindings it read
        calls.append(True)
        return real_deps(fn)
    monkeypatch.setattr(comp_mod, "code_version", counting)
    monkeypatch.setattr(comp_mod, "version_and_deps", counting_deps)

    @component
    def inc(x):
        return x + 1
    for _ in range(3):
        assert inc.spec.code_version
    assert calls == [True, False]    # its version, and its code alone (``refresh_version``)
    inc.refresh_version()            # a run starting: the code alone again, nothing changed
    assert calls == [True, False, False]


def test_user_decorator_is_part_of_the_version(load):
    src = """
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            return fn(*args) * {m}
        return wrapper

    @deco
    def f(x):
        return x
    """
    a = load(src.replace("{m}", "1"))
    b = load(src.replace("{m}", "2"))
    assert code_version(a.f) != code_version(b.f)


def test_mutable_value_imported_from_a_user_module_follows_its_definition(load):
    main = "from {h} import TABLE\ndef f(i):\n    return TABLE[i]\n"
    a = load(main, h="TABLE = [1, 2]\n")
    b = load(main, h="TABLE = [1, 3]\n")
    v = code_version(a.f)
    assert code_version(b.f) != v
    a.TABLE.append(3)                   # runtime contents still do not count
    assert code_version(a.f) == v


def test_library_object_constant_follows_its_definition(load):
    pytest.importorskip("numpy")
    src = "import numpy as np\nW = np.array({w})\ndef f(x):\n    return float((W * x).sum())\n"
    a = load(src.replace("{w}", "[1, 2, 3]"))
    b = load(src.replace("{w}", "[1, 2, 5]"))
    assert code_version(a.f) != code_version(b.f)


def test_wrapped_cycles_and_components_terminate(load):
    m = load("""
    from twingraph import component

    class Loop:
        pass

    A, B = Loop(), Loop()
    A.__wrapped__, B.__wrapped__ = B, A

    @component
    def f(x):
        return (x, A)
    """)
    assert code_version(m.f) == code_version(m.f.fn)     # a component is its function
    assert len(code_version(m.A)) == 16


def test_user_module_held_in_a_closure_cell(load):
    main = """
    import {h} as hm

    def make(mod):
        def f(x):
            return mod.helper(x)
        return f

    f = make(hm)
    """
    a = load(main, h=HELPER.replace("{inc}", "1"))
    b = load(main, h=HELPER.replace("{inc}", "2"))
    assert code_version(a.f) != code_version(b.f)


DECORATED = """
def component(**settings):          # stands for twingraph's: its settings are not code
    return lambda fn: fn

@component(labels={labels}, timeout={timeout})
def scale(x):
    return x * {factor}
"""


def test_decorator_settings_are_not_part_of_the_version(load):
    # labels, timeouts and retry policies change how a task runs, not what it computes (the
    # settings that do are the key's config): changing one must not re-run the component
    def version(labels="{'team': 'a'}", timeout="10", factor="2"):
        src = DECORATED.replace("{labels}", labels).replace("{timeout}", timeout)
        return code_version(load(src.replace("{factor}", factor)).scale)
    assert version() == version(labels="{'team': 'b'}") == version(timeout="60")
    assert version() != version(factor="3")          # the function's own text still counts
    # another decorator's arguments may change what the function computes: they count
    other = DECORATED.replace("@component(", "@deco(").replace(
        "def component(", "def deco(").replace("{factor}", "2")
    assert code_version(load(other.replace("{labels}", "1").replace("{timeout}", "1")).scale) \
        != code_version(load(other.replace("{labels}", "2").replace("{timeout}", "1")).scale)


def test_modules_imported_in_the_body_count_even_relative_or_not_loaded_yet(tmp_path):
    """A helper imported inside the component (``from .helpers import norm``, ``from . import
    helpers``, or absolutely while nothing had imported it yet) was left out: editing it
    reused the stale result. Each version is taken in a fresh interpreter, as a new run is."""
    import subprocess
    pkg = tmp_path / "cvpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "pipe.py").write_text(
        "def rel(x):\n    from .helpers import norm\n    return norm(x)\n\n"
        "def rel_mod(x):\n    from . import helpers\n    return helpers.norm(x)\n\n"
        "def absolute(x):\n    from cvpkg.helpers import norm\n    return norm(x)\n")

    def versions(factor):
        (pkg / "helpers.py").write_text(f"def norm(x):\n    return x * {factor}\n")
        script = ("import sys; sys.path.insert(0, sys.argv[1]); import cvpkg.pipe as p; "
                  "from twingraph.core.codeversion import code_version; "
                  "print(*[code_version(f) for f in (p.rel, p.rel_mod, p.absolute)])")
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                             text=True, check=True)
        return out.stdout.split()

    first, edited, again = versions(10), versions(11), versions(11)
    assert all(a != b for a, b in zip(first, edited)), (first, edited)
    assert edited == again


def test_functions_held_in_a_module_level_container_count(load):
    """``OPS = {"inc": inc}`` and a body that calls ``OPS[name](x)``: the function's code is
    part of the version (it was only the container's text: a changed ``inc`` was a stale hit),
    through a helper module's attribute, a mutation statement and a container of containers."""
    src = """
    import {h} as helpers

    def inc(x):
        return x + {step}

    OPS = {"inc": inc}
    MORE = []
    MORE.append(helpers.double)
    ALL = [OPS, MORE]

    def f(name, x):
        return ALL[0][name](x) + ALL[1][0](x)
    """
    base = load(src.replace("{step}", "1"), h="def double(x):\n    return 2 * x\n")
    v = code_version(base.f)
    assert code_version(load(src.replace("{step}", "1"),
                             h="def double(x):\n    return 2 * x\n").f) == v
    assert code_version(load(src.replace("{step}", "2"),
                             h="def double(x):\n    return 2 * x\n").f) != v
    assert code_version(load(src.replace("{step}", "1"),
                             h="def double(x):\n    return 3 * x\n").f) != v
    base.OPS["dec"] = lambda x: x - 1       # runtime contents still do not count
    assert code_version(base.f) == v


def test_containers_that_mention_each_other_terminate(load):
    m = load("A = []\nB = [A]\nA.append(B)\ndef f():\n    return len(A) + len(B)\n")
    assert code_version(m.f) == code_version(m.f)


def test_functions_a_decorator_registers_count(load):
    """A registry filled by a user decorator: ``@register("inc")`` puts ``inc`` in ``REG``
    and the body calls ``REG[name](x)``; a change in ``inc`` is a new version."""
    src = """
    REG = {}

    def register(name):
        def deco(fn):
            REG[name] = fn
            return fn
        return deco

    @register("inc")
    def inc(x):
        return x + {step}

    def f(name, x):
        return REG[name](x)
    """
    v = code_version(load(src.replace("{step}", "1")).f)
    assert code_version(load(src.replace("{step}", "1")).f) == v
    assert code_version(load(src.replace("{step}", "2")).f) != v


def _versions_of(tmp_path, files, names):
    """Code versions of ``names`` in module ``main`` (a file among ``files``), taken in a fresh
    interpreter as a new run takes them; the files keep their module names between calls."""
    import subprocess
    import textwrap
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import main; "
              "from twingraph.core.codeversion import code_version; "
              f"print(*[code_version(getattr(main, n)) for n in {list(names)!r}])")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_methods_of_plain_data_instances_count(tmp_path):
    """A frozen dataclass, a named tuple or an enum member at module level (or as a default)
    is plain data, hashed by its fields: editing one of its class's methods was a stale hit."""
    helpers = """
    import enum
    from dataclasses import dataclass
    from typing import NamedTuple

    @dataclass(frozen=True)
    class Settings:
        scale: int = 2
        def apply(self, x):
            return x * self.scale{edit}

    class Pt(NamedTuple):
        x: int
        def norm(self):
            return abs(self.x){edit}

    class Op(enum.Enum):
        DOUBLE = 1
        def apply(self, x):
            return x * 2{edit}
    """
    main = """
    from helpers import Settings, Pt, Op
    SETTINGS = Settings(scale=2)
    ORIGIN = Pt(-3)
    DEFAULT_OP = Op.DOUBLE

    def c_frozen(x):
        return SETTINGS.apply(x)

    def c_namedtuple(x):
        return ORIGIN.norm() + x

    def c_enum(x):
        return DEFAULT_OP.apply(x)

    def c_default(x, s=Settings(scale=2)):
        return s.apply(x)
    """
    names = ("c_frozen", "c_namedtuple", "c_enum", "c_default")

    def versions(edit):
        return _versions_of(tmp_path, {"helpers.py": helpers.replace("{edit}", edit),
                                       "main.py": main}, names)
    first, edited, again = versions(""), versions(" + 1000"), versions(" + 1000")
    assert all(a != b for a, b in zip(first, edited)), (first, edited)
    assert edited == again


def test_singledispatch_helpers_count(tmp_path):
    """``functools.singledispatch`` gives its wrapper the user's module name: the wrapper's
    own (library) code was hashed, and neither the base function nor the registered ones."""
    helpers = """
    from functools import singledispatch

    @singledispatch
    def convert(v):
        return ["base", v]{base}

    @convert.register
    def _(v: int):
        return ["int", v * {k}]
    """
    main = "from helpers import convert\n\ndef f(v):\n    return convert(v)\n"

    def version(base, k):
        return _versions_of(tmp_path, {"helpers.py": helpers.replace("{base}", base)
                                       .replace("{k}", k), "main.py": main}, ["f"])[0]
    v = version("", "10")
    assert version("", "10") == v
    assert version(" + []", "10") != v
    assert version("", "7") != v
