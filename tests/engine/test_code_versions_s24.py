"""Code versions a review found stale (session 24): an edit that changes what a component
computes left its ``code_version`` as it was, so its stored result was a memo hit. Each case
writes a small project, takes the version of a component that reads it, edits a file,
reloads (as a new process would import it), and wants a new version. Each fails without its
fix."""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from twingraph.core.codeversion import code_of_value, code_version

CASES = {     # name: (files, {file: (text in it, what it is edited to)}, the component's body)
    "an if at module level picks the binding": (
        {"cv_h": """
            BIG = False
            if BIG:
                W = [10]
            else:
                W = [2]
            """},
        {"cv_h": ("BIG = False", "BIG = True")},
        "return cv_h.W[0] * x"),
    "the class statement that was bound, in an if": (
        {"cv_h": """
            BIG = False
            if BIG:
                class M:
                    W = {"k": 10}
            else:
                class M:
                    W = {"k": 2}
            """},
        {"cv_h": ("BIG = False", "BIG = True")},
        "return cv_h.M.W['k'] * x"),
    "the second of two class statements": (
        {"cv_h": "class M:\n    W = [1]\n\n\nclass M:\n    W = [2]\n"},
        {"cv_h": ("W = [2]", "W = [3]")},
        "return cv_h.M.W[0] * x"),
    "a bound method of a module-level instance": (
        {"cv_h": """
            class M:
                def __init__(self, k):
                    self.k = k

                def p(self, x):
                    return self.k * x


            MODEL = M(2)
            predict = MODEL.p
            """},
        {"cv_h": ("M(2)", "M(3)")},
        "return cv_h.predict(x)"),
    "a partial over a module-level instance": (
        {"cv_h": """
            import functools


            class C:
                def __init__(self, k):
                    self.k = k


            def ap(c, x):
                return c.k * x


            APPLY = functools.partial(ap, C(2))
            """},
        {"cv_h": ("C(2)", "C(3)")},
        "return cv_h.APPLY(x)"),
    "an object a star import brings": (
        {"cv_s": """
            class Cfg:
                def __init__(self, k):
                    self.k = k


            CFG = Cfg(2)
            """,
         "cv_h": "from cv_s import *\n"},
        {"cv_s": ("Cfg(2)", "Cfg(3)")},
        "return cv_h.CFG.k * x"),
    "a module held in a dict": (
        {"cv_f": "def run(x):\n    return 2 * x\n",
         "cv_h": "import cv_f\n\nBACKENDS = {'fast': cv_f}\n"},
        {"cv_f": ("2 * x", "3 * x")},
        "return cv_h.BACKENDS['fast'].run(x)"),
    "a registry a class-method decorator fills": (
        {"cv_h": """
            class Registry:
                OPS = {}

                @classmethod
                def register(cls, name):
                    def deco(f):
                        cls.OPS[name] = f
                        return f
                    return deco


            @Registry.register("d")
            def d(x):
                return 2 * x
            """},
        {"cv_h": ("2 * x", "3 * x")},
        "return cv_h.Registry.OPS['d'](x)"),
    "a singledispatchmethod calling another module": (
        {"cv_f": "def f(x):\n    return 2 * x\n",
         "cv_h": """
            import functools

            import cv_f


            class K:
                @functools.singledispatchmethod
                def go(self, x):
                    return cv_f.f(x)
            """},
        {"cv_f": ("2 * x", "3 * x")},
        "return cv_h.K().go(x)"),
    # second review
    "a try block picks the binding": (
        {"cv_h": """
            BIG = False
            try:
                assert BIG
                W = [10]
            except AssertionError:
                W = [2]
            """},
        {"cv_h": ("BIG = False", "BIG = True")},
        "return cv_h.W[0] * x"),
    "a module held in a dict beside another module's attribute": (
        {"cv_f": "def run(x):\n    return 2 * x\n",
         "cv_h": "import os\n\nimport cv_f\n\nBACKENDS = {'fast': cv_f, 'sep': os.sep}\n"},
        {"cv_f": ("2 * x", "3 * x")},
        "return cv_h.BACKENDS['fast'].run(x)"),
    "a class-attribute registry of tuples in a defaultdict": (
        {"cv_f": "def d(x):\n    return 2 * x\n",
         "cv_h": """
            import collections

            import cv_f


            class Registry:
                OPS = collections.defaultdict(list)


            Registry.OPS["d"].append(("double", cv_f.d))
            """},
        {"cv_f": ("2 * x", "3 * x")},
        "return cv_h.Registry.OPS['d'][0][1](x)"),
}


def _write(tmp_path, files):
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.mark.parametrize("case", list(CASES))
def test_an_edit_that_changes_the_result_changes_the_version(tmp_path, monkeypatch, case):
    files, edits, body = CASES[case]
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [n for n in ("cv_s", "cv_f", "cv_h") if n in files]     # dependencies first
    _write(tmp_path, {**files, "cv_pipe": f"import cv_h\n\n\ndef comp(x):\n    {body}\n"})
    for n in (*names, "cv_pipe"):
        sys.modules.pop(n, None)
    try:
        pipe = importlib.import_module("cv_pipe")
        before, result = code_version(pipe.comp), pipe.comp(5)
        _write(tmp_path, {n: textwrap.dedent(files[n]).replace(old, new)
                          for n, (old, new) in edits.items()})
        for n in names:                    # as a new process imports them
            importlib.reload(sys.modules[n])
        assert pipe.comp(5) != result      # the edit changes what it computes...
        assert code_version(pipe.comp) != before      # ... and its version
    finally:
        for n in (*names, "cv_pipe"):
            sys.modules.pop(n, None)


def test_a_module_passed_as_an_argument_counts_by_its_code(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write(tmp_path, {"cv_arg": "def f(x):\n    return 2 * x\n"})
    sys.modules.pop("cv_arg", None)
    try:
        mod = importlib.import_module("cv_arg")
        before = code_of_value(mod)
        assert before is not None
        _write(tmp_path, {"cv_arg": "def f(x):\n    return 3 * x\n"})
        importlib.reload(mod)
        assert code_of_value(mod) != before
        assert code_of_value(importlib) is None          # a library module: by its name
    finally:
        sys.modules.pop("cv_arg", None)


def test_a_cache_a_class_fills_while_tasks_run_does_not_change_its_code(tmp_path, monkeypatch):
    """``values=False`` (what ``refresh_version`` asks: has the code changed?) does not read
    what a class attribute's container holds: filled while tasks ran, it made the next run of
    the same process miss ("code changed since the last run")."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _write(tmp_path, {"cv_k": """
        class Kernels:
            _compiled = {}

            @classmethod
            def get(cls, k):
                if k not in cls._compiled:
                    cls._compiled[k] = lambda x: x * k
                return cls._compiled[k]


        def comp(x):
            return Kernels.get(2)(x)
        """})
    sys.modules.pop("cv_k", None)
    try:
        mod = importlib.import_module("cv_k")
        before = code_version(mod.comp, values=False)
        assert mod.comp(3) == 6
        assert code_version(mod.comp, values=False) == before
    finally:
        sys.modules.pop("cv_k", None)
