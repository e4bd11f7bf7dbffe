"""Stale hits found by the session 22 review of code versions: each test runs a real pipeline,
edits code the result depends on, runs it again and checks the result against a fresh
computation (a new home, nothing memoized).

The pipeline runs are new processes, as a user's runs are (``twingraph run`` twice); the
``importlib.reload`` tests run in this process, as a notebook does. Nothing is patched."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twingraph import component, pipeline

ROOT = Path(__file__).resolve().parents[2]

_PRINT = "\nif __name__ == '__main__':\n    print(main.run().unwrap()['outputs']['result'])\n"

# name -> (files, edits [(file, old, new)], result before, result after the edit)
CASES = {
    # a class-level dispatch table naming another module's functions
    "class_dict_of_module_functions": ({
        "s22a_ops.py": "def double(x):\n    return x * 2\n\ndef square(x):\n    return x * x\n",
        "s22a_model.py": ("import s22a_ops\n\n"
                          "class Transformer:\n"
                          "    METHODS = {'double': s22a_ops.double, 'square': s22a_ops.square}\n\n"
                          "    def __init__(self, method):\n"
                          "        self.method = method\n\n"
                          "    def apply(self, xs):\n"
                          "        return [self.METHODS[self.method](x) for x in xs]\n"),
        "flow.py": ("from twingraph import component, pipeline\n"
                    "from s22a_model import Transformer\n\n"
                    "@component\n"
                    "def transform(xs: list, method: str) -> list:\n"
                    "    return Transformer(method).apply(xs)\n\n"
                    "@pipeline(name='s22_class_dict')\n"
                    "def main():\n"
                    "    return transform(xs=[1, 2, 3], method='double')\n" + _PRINT),
    }, [("s22a_ops.py", "return x * 2", "return x * 3")], "[2, 4, 6]", "[3, 6, 9]"),
    # a class-level tuple of functions of the class's own module
    "class_tuple_of_functions": ({
        "s22b_model.py": ("def double(x):\n    return x * 2\n\n"
                          "class Transformer:\n"
                          "    STEPS = (double,)\n\n"
                          "    def apply(self, xs):\n"
                          "        for step in self.STEPS:\n"
                          "            xs = [step(x) for x in xs]\n"
                          "        return xs\n"),
        "flow.py": ("from twingraph import component, pipeline\n"
                    "from s22b_model import Transformer\n\n"
                    "@component\n"
                    "def transform(xs: list) -> list:\n"
                    "    return Transformer().apply(xs)\n\n"
                    "@pipeline(name='s22_class_tuple')\n"
                    "def main():\n"
                    "    return transform(xs=[1, 2, 3])\n" + _PRINT),
    }, [("s22b_model.py", "return x * 2", "return x * 3")], "[2, 4, 6]", "[3, 6, 9]"),
    # enum members whose values are partials of module functions
    "enum_members_of_partials": ({
        "s22c_acts.py": ("import enum, functools\n\n"
                         "def relu(x):\n    return x if x > 0 else 0\n\n"
                         "def ident(x):\n    return x\n\n"
                         "class Activation(enum.Enum):\n"
                         "    RELU = functools.partial(relu)\n"
                         "    IDENT = functools.partial(ident)\n\n"
                         "    def __call__(self, x):\n"
                         "        return self.value(x)\n"),
        "flow.py": ("from twingraph import component, pipeline\n"
                    "from s22c_acts import Activation\n\n"
                    "@component\n"
                    "def activate(xs: list) -> list:\n"
                    "    return [Activation.RELU(x) for x in xs]\n\n"
                    "@pipeline(name='s22_enum_partials')\n"
                    "def main():\n"
                    "    return activate(xs=[-1, 2])\n" + _PRINT),
    }, [("s22c_acts.py", "return x if x > 0 else 0\n", "return 2 * x if x > 0 else 0\n")],
        "[0, 2]", "[0, 4]"),
    # a class attribute that is an object another module builds
    "class_attribute_from_another_module": ({
        "s22d_scalers.py": ("class Scaler:\n"
                            "    def __init__(self, k):\n"
                            "        self.k = k\n\n"
                            "    def __call__(self, x):\n"
                            "        return x * self.k\n\n"
                            "DEFAULT_SCALER = Scaler(2)\n"),
        "s22d_model.py": ("from s22d_scalers import DEFAULT_SCALER\n\n"
                          "class Model:\n"
                          "    scaler = DEFAULT_SCALER\n\n"
                          "    def predict(self, xs):\n"
                          "        return [self.scaler(x) for x in xs]\n"),
        "flow.py": ("from twingraph import component, pipeline\n"
                    "from s22d_model import Model\n\n"
                    "@component\n"
                    "def predict(xs: list) -> list:\n"
                    "    return Model().predict(xs)\n\n"
                    "@pipeline(name='s22_class_attr_object')\n"
                    "def main():\n"
                    "    return predict(xs=[1, 2])\n" + _PRINT),
    }, [("s22d_scalers.py", "DEFAULT_SCALER = Scaler(2)", "DEFAULT_SCALER = Scaler(3)")],
        "[2, 4]", "[3, 6]"),
    # a library decorator without __wrapped__: a constant the decorated function reads
    "vectorized_function_constant": ({
        "s22e_mathops.py": ("import numpy as np\n\n"
                            "CUTOFF = 0.5\n\n"
                            "def relu(x):\n    return x if x > 0 else 0.0\n\n"
                            "@np.vectorize\n"
                            "def activate(x):\n"
                            "    return relu(x - CUTOFF)\n"),
        "flow.py": ("import numpy as np\n"
                    "from twingraph import component, pipeline\n"
                    "import s22e_mathops\n\n"
                    "@component\n"
                    "def layer(xs: list) -> list:\n"
                    "    return s22e_mathops.activate(np.array(xs)).tolist()\n\n"
                    "@pipeline(name='s22_vectorize_const')\n"
                    "def main():\n"
                    "    return layer(xs=[-1.0, 0.0, 1.0, 2.0])\n" + _PRINT),
    }, [("s22e_mathops.py", "CUTOFF = 0.5", "CUTOFF = 1.5")],
        "[0.0, 0.0, 0.5, 1.5]", "[0.0, 0.0, 0.0, 0.5]"),
    # ... and a helper function it calls
    "vectorized_function_helper": ({
        "s22f_mathops.py": ("import numpy as np\n\n"
                            "CUTOFF = 0.5\n\n"
                            "def relu(x):\n    return x if x > 0 else 0.0\n\n"
                            "@np.vectorize\n"
                            "def activate(x):\n"
                            "    return relu(x - CUTOFF)\n"),
        "flow.py": ("import numpy as np\n"
                    "from twingraph import component, pipeline\n"
                    "import s22f_mathops\n\n"
                    "@component\n"
                    "def layer(xs: list) -> list:\n"
                    "    return s22f_mathops.activate(np.array(xs)).tolist()\n\n"
                    "@pipeline(name='s22_vectorize_helper')\n"
                    "def main():\n"
                    "    return layer(xs=[-1.0, 0.0, 1.0, 2.0])\n" + _PRINT),
    }, [("s22f_mathops.py", "return x if x > 0 else 0.0", "return 2 * x if x > 0 else 0.0")],
        "[0.0, 0.0, 0.5, 1.5]", "[0.0, 0.0, 1.0, 3.0]"),
    # a package's PEP 562 __getattr__ importing a submodule lazily
    "lazy_submodule_of_a_package": ({
        "s22g_lib/__init__.py": ("import importlib\n\n"
                                 "def __getattr__(name):\n"
                                 "    if name == 'mathx':\n"
                                 "        return importlib.import_module('.mathx', __name__)\n"
                                 "    raise AttributeError(name)\n"),
        "s22g_lib/mathx.py": "def f(x):\n    return x + 1\n",
        "flow.py": ("from twingraph import component, pipeline\n"
                    "import s22g_lib\n\n"
                    "@component\n"
                    "def go(xs: list) -> list:\n"
                    "    return [s22g_lib.mathx.f(x) for x in xs]\n\n"
                    "@pipeline(name='s22_lazy_submodule')\n"
                    "def main():\n"
                    "    return go(xs=[1, 2])\n" + _PRINT),
    }, [("s22g_lib/mathx.py", "x + 1", "x + 5")], "[2, 3]", "[6, 7]"),
}


def _run(root, home):
    """Run ``root/flow.py`` in a new process with its store under ``home``; what it printed."""
    env = dict(os.environ, TWINGRAPH_HOME=str(home),
               PYTHONPATH=os.pathsep.join([str(root), str(ROOT / "src")]))
    out = subprocess.run([sys.executable, "-B", "flow.py"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_edit_of_code_the_component_reaches_is_a_new_version(tmp_path, case):
    """Code reached through a class body (a dispatch table, a tuple of steps, enum members
    holding partials, an attribute bound to another module's object), through a library
    decorator that hides the function (``@np.vectorize``: no ``__wrapped__``) or through a
    package's lazy ``__getattr__`` was not part of the version: after the edit, the next run
    hit the old result."""
    files, edits, before, after = CASES[case]
    root = tmp_path / "proj"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert _run(root, tmp_path / "home") == before
    for name, old, new in edits:
        text = (root / name).read_text()
        assert old in text
        (root / name).write_text(text.replace(old, new))
    fresh = _run(root, tmp_path / "fresh_home")
    assert fresh == after
    assert _run(root, tmp_path / "home") == fresh


# --- same process: importlib.reload of a module an argument's code reads ----------------------

def _module(tmp_path, monkeypatch, name, text):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{name}.py").write_text(text)
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def _edit(tmp_path, module, old, new):
    path = tmp_path / f"{module.__name__}.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    importlib.invalidate_caches()
    importlib.reload(module)


def test_a_function_argument_reading_a_reloaded_helper_is_a_new_key(
        engine, tmp_path, monkeypatch):
    """``apply(fn=fns.g)`` where ``g`` calls ``helpers.h``: after ``importlib.reload(helpers)``
    the version of ``g`` (an argument's code, cached by ``g``'s identity) was the old one, and
    the old result came back."""
    helpers = _module(tmp_path, monkeypatch, "s22_reload_helpers",
                      "def h(x):\n    return x + 1\n")
    fns = _module(tmp_path, monkeypatch, "s22_reload_fns",
                  "import s22_reload_helpers\n\n"
                  "def g(x):\n    return s22_reload_helpers.h(x) * 10\n")

    @component
    def apply(fn, xs):
        return [fn(x) for x in xs]

    @pipeline(name="s22_reload_function_argument")
    def p():
        return apply(fn=fns.g, xs=[1, 2])

    try:
        assert p.run(engine=engine).value["outputs"]["result"] == [20, 30]
        _edit(tmp_path, helpers, "x + 1", "x + 2")
        assert [fns.g(1), fns.g(2)] == [30, 40]         # what runs now
        assert p.run(engine=engine).value["outputs"]["result"] == [30, 40]
    finally:
        sys.modules.pop("s22_reload_helpers", None)
        sys.modules.pop("s22_reload_fns", None)


def test_an_instance_argument_whose_methods_read_a_reloaded_helper_is_a_new_key(
        engine, tmp_path, monkeypatch):
    """An instance of a user class as an argument carries its class's version; the class's
    method calls ``helpers.h``, and after ``importlib.reload(helpers)`` the cached version
    (by the class's identity) kept the key."""
    helpers = _module(tmp_path, monkeypatch, "s22_reload_helpers2",
                      "def h(x):\n    return x + 1\n")
    models = _module(tmp_path, monkeypatch, "s22_reload_models",
                     "import s22_reload_helpers2\n\n"
                     "class Model:\n"
                     "    def predict(self, x):\n"
                     "        return s22_reload_helpers2.h(x) * 10\n")
    model = models.Model()

    @component
    def predict(m, xs):
        return [m.predict(x) for x in xs]

    @pipeline(name="s22_reload_instance_argument")
    def p():
        return predict(m=model, xs=[1, 2])

    try:
        assert p.run(engine=engine).value["outputs"]["result"] == [20, 30]
        _edit(tmp_path, helpers, "x + 1", "x + 2")
        assert [model.predict(1), model.predict(2)] == [30, 40]     # what runs now
        assert p.run(engine=engine).value["outputs"]["result"] == [30, 40]
    finally:
        sys.modules.pop("s22_reload_helpers2", None)
        sys.modules.pop("s22_reload_models", None)


def test_a_module_level_class_component_instance_sees_a_reloaded_helper(
        engine, tmp_path, monkeypatch):
    """A ``BaseComponent`` instance made once at module level kept the version of its first
    run for good (its spec is cached, and a run refreshed only function components)."""
    from twingraph import BaseComponent
    helpers = _module(tmp_path, monkeypatch, "s22_reload_helpers3",
                      "def h(x):\n    return x + 1\n")
    comps = _module(tmp_path, monkeypatch, "s22_reload_comps",
                    "import s22_reload_helpers3\n"
                    "from twingraph import BaseComponent\n\n"
                    "class Inc(BaseComponent):\n"
                    "    def execute(self, xs):\n"
                    "        return [s22_reload_helpers3.h(x) for x in xs]\n\n"
                    "INC = Inc()\n")
    assert isinstance(comps.INC, BaseComponent)

    @pipeline(name="s22_reload_class_component")
    def p():
        return comps.INC(xs=[1, 2])

    try:
        assert p.run(engine=engine).value["outputs"]["result"] == [2, 3]
        _edit(tmp_path, helpers, "x + 1", "x + 2")
        assert p.run(engine=engine).value["outputs"]["result"] == [3, 4]
    finally:
        sys.modules.pop("s22_reload_helpers3", None)
        sys.modules.pop("s22_reload_comps", None)


# --- a long-lived process: a helper edited on disk, not reloaded ------------------------------

_LIMITS = ("LIMITS = {{'low': 0, 'high': {high}}}\n\n"
           "def clip(x):\n"
           "    return max(LIMITS['low'], min(LIMITS['high'], x))\n")
_SESSION = ("import pathlib\n"
            "import flow\n"
            "print(flow.main.run().unwrap()['outputs']['result'])\n"
            "p = pathlib.Path('s22h_helpers.py')\n"
            "p.write_text(p.read_text().replace(\"'high': 10\", \"'high': 3\"))\n"
            "print(flow.main.run().unwrap()['outputs']['result'])\n")


def test_a_helper_edited_on_disk_but_not_reloaded_keeps_the_version_of_the_code_that_runs(
        tmp_path):
    """A notebook runs a pipeline, a helper's module-level statement is edited on disk (not
    reloaded) and the pipeline runs again: the version was taken from the new text while the
    old code ran, so the old code's result was stored under the new code's key, and a fresh
    process running the new code hit it."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "s22h_helpers.py").write_text(_LIMITS.format(high=10))
    (root / "flow.py").write_text(
        "from twingraph import component, pipeline\n"
        "import s22h_helpers\n\n"
        "@component\n"
        "def clipped(xs: list) -> list:\n"
        "    return [s22h_helpers.clip(x) for x in xs]\n\n"
        "@pipeline(name='s22_edited_not_reloaded')\n"
        "def main():\n"
        "    return clipped(xs=[1, 5, 20])\n" + _PRINT)
    (root / "session.py").write_text(_SESSION)
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([str(root), str(ROOT / "src")]))
    out = subprocess.run([sys.executable, "-B", "session.py"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the session ran the code it had loaded, both times
    assert out.stdout.split() == ["[1,", "5,", "10]", "[1,", "5,", "10]"]
    fresh = _run(root, tmp_path / "fresh_home")
    assert fresh == "[1, 3, 3]"
    assert _run(root, tmp_path / "home") == fresh


# --- the review of these fixes (session 22, later) --------------------------------------------

def test_a_function_of_a_module_edited_on_disk_keeps_the_text_it_was_loaded_from(
        tmp_path, monkeypatch):
    """The module's statements were pinned as loaded, but a function of it walked for the
    first time after the edit was read from the edited file (``inspect.getsource``): the old
    code's results went under the new text's key. Its version must equal what a process
    that loaded the old text computes."""
    from twingraph.core.codeversion import code_version
    old = "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 100\n"
    helpers = _module(tmp_path, monkeypatch, "s22_pinned_helpers", old)
    try:
        code_version(helpers.f)                                   # the module is read: pinned
        (tmp_path / "s22_pinned_helpers.py").write_text(old.replace("x + 100", "x + 200"))
        edited_unloaded = code_version(helpers.g)                 # the loaded g is the old one
        (tmp_path / "s22_pinned_helpers.py").write_text(old)
        fresh = subprocess.run(
            [sys.executable, "-B", "-c", "import s22_pinned_helpers as h; "
             "from twingraph.core.codeversion import code_version as v; print(v(h.g))"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT / 'src'}"))
        assert fresh.returncode == 0, fresh.stderr
        assert edited_unloaded == fresh.stdout.strip()
    finally:
        sys.modules.pop("s22_pinned_helpers", None)


def test_a_lazy_packages_submodules_are_never_imported_by_a_version(tmp_path, monkeypatch):
    """A PEP 562 package: a submodule named like an attribute the body reads on another
    object (``subprocess.run`` and ``pkg/run.py``) was imported (its code ran: a script that
    exits ended the run). A submodule not imported yet counts by its text; once imported it is
    walked (what it imports counts too)."""
    from twingraph.core.codeversion import code_version
    pkg = tmp_path / "s22lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import importlib\n\n"
        "def __getattr__(name):\n"
        "    return importlib.import_module(f'{__name__}.{name}')\n")
    (pkg / "run.py").write_text("raise SystemExit('s22lazypkg.run was imported')\n")
    (pkg / "utils.py").write_text("def scale(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    flow = _module(tmp_path, monkeypatch, "s22_lazy_flow",
                   "import subprocess\nimport s22lazypkg\n\n"
                   "def step(x):\n"
                   "    subprocess.run(['true'])\n"
                   "    return s22lazypkg.utils.scale(x)\n")
    try:
        before = code_version(flow.step)
        assert "s22lazypkg.run" not in sys.modules and "s22lazypkg.utils" not in sys.modules
        (pkg / "utils.py").write_text("def scale(x):\n    return x * 3\n")
        assert code_version(flow.step) != before            # not imported: its text counts
        assert "s22lazypkg.run" not in sys.modules
        assert flow.step(2) == 6                            # the body imports utils now
        walked = code_version(flow.step)                    # imported: walked as a module
        (pkg / "utils.py").write_text("def scale(x):\n    return x * 4\n")
        importlib.reload(sys.modules["s22lazypkg.utils"])
        assert code_version(flow.step) != walked
    finally:
        for name in ("s22_lazy_flow", "s22lazypkg", "s22lazypkg.utils", "s22lazypkg.run"):
            sys.modules.pop(name, None)


def test_a_class_components_memo_default_filled_between_runs_is_not_a_new_version(
        engine, tmp_path, monkeypatch):
    """``BaseComponent.refresh_version`` took the version with the values of mutable
    defaults: a method's ``_memo={}`` filled by the first run made the second one miss."""
    comps = _module(tmp_path, monkeypatch, "s22_memo_default",
                    "from twingraph import BaseComponent\n\n"
                    "class Lookup(BaseComponent):\n"
                    "    def execute(self, x, _memo={}):\n"
                    "        _memo[x] = x * 10\n"
                    "        return _memo[x]\n\n"
                    "LOOKUP = Lookup()\n")

    @pipeline(name="s22_memo_default")
    def p():
        return comps.LOOKUP(x=4)

    try:
        statuses = []
        for _ in range(3):
            r = p.run(engine=engine)
            assert r.value["outputs"]["result"] == 40
            statuses.append([t.cache_status for t in engine.metadata.get_tasks(r.run_id)])
        assert statuses == [["miss"], ["hit"], ["hit"]]
    finally:
        sys.modules.pop("s22_memo_default", None)


def test_a_future_inside_an_ordered_dict_is_refused_not_keyed_without_its_producer(engine):
    """Walked pair by pair, an OrderedDict holding a future was keyed while its producer had
    no content hash yet, and the consumer got the future itself (a stale hit after the
    producer's code changed). Such a future is refused with the reason, as before."""
    from collections import OrderedDict

    @component
    def make_s22(x: int) -> int:
        return x * 10

    @component
    def show_s22(weights) -> str:
        return ",".join(f"{k}={v}" for k, v in weights.items())

    @pipeline(name="s22_ordered_future")
    def p():
        return show_s22(weights=OrderedDict([("a", make_s22(x=1)["outputs"]["result"])]))

    r = p.run(engine=engine)
    assert r.error is not None
    assert "future" in str(r.error) and "inside lists" in str(r.error)


def test_what_an_imported_lazy_submodule_imports_counts(tmp_path, monkeypatch):
    """Counted by its own text only, a lazy package's submodule hid what it imports: an edit
    of ``pkg/_impl.py`` that ``pkg/ops.py`` calls kept the version (a stale hit)."""
    from twingraph.core.codeversion import code_version
    pkg = tmp_path / "s22lazy2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import importlib\n\n"
        "def __getattr__(name):\n"
        "    return importlib.import_module(f'{__name__}.{name}')\n")
    (pkg / "_impl.py").write_text("def factor():\n    return 2\n")
    (pkg / "ops.py").write_text("from s22lazy2._impl import factor\n\n"
                                "def scale(x):\n    return x * factor()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    flow = _module(tmp_path, monkeypatch, "s22_lazy_flow2",
                   "import s22lazy2\n\ndef step(x):\n    return s22lazy2.ops.scale(x)\n")
    try:
        assert flow.step(10) == 20                        # ops and _impl imported
        before = code_version(flow.step)
        (pkg / "_impl.py").write_text("def factor():\n    return 3\n")
        importlib.reload(sys.modules["s22lazy2._impl"])
        importlib.reload(sys.modules["s22lazy2.ops"])
        assert flow.step(10) == 30
        assert code_version(flow.step) != before
    finally:
        for name in ("s22_lazy_flow2", "s22lazy2", "s22lazy2.ops", "s22lazy2._impl"):
            sys.modules.pop(name, None)
