"""A process worker runs the code its task's key names (session 28 review). It imported user
modules from disk by name, so three things put another code's result under a key:
- an ``importlib.reload`` in the driver: the worker kept the module it had imported;
- a helper edited on disk after the driver versioned it: a worker importing it later ran the
  edit under the old key (an edit during a long run, then undone, left a wrong value stored);
- two project directories with a ``helpers.py`` each: the worker's ``sys.path`` found the
  other one.
Now the worker gets the module texts the driver versioned. Each case runs in a fresh Python
process (real worker processes, SQLite files), and a fresh home is the reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

PIPE = textwrap.dedent("""
    import {helper}
    from twingraph import component, pipeline

    @component(executor="process")
    def in_process(n):
        return {helper}.f(n)

    @component(executor="thread")
    def in_thread(n):
        return {helper}.f(n)

    @pipeline(name="{name}")
    def p(n: int = 3):
        return [in_process(n=n)["outputs"]["result"], in_thread(n=n)["outputs"]["result"]]
""")


def _python(tmp_path: Path, script: str, home: str = "home") -> list[str]:
    (tmp_path / "drive.py").write_text(textwrap.dedent(script))
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / home), PYTHONDONTWRITEBYTECODE="1")
    env.pop("TWINGRAPH_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "drive.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line[:1] in "[{"]


def _helper(path: Path, factor: int) -> None:
    path.write_text(f"def f(x):\n    return x * {factor}\n")


def test_a_reload_in_the_driver_reaches_the_worker(tmp_path: Path) -> None:
    _helper(tmp_path / "hlp_r.py", 2)
    (tmp_path / "pipe_r.py").write_text(PIPE.format(helper="hlp_r", name="reload_s28"))
    lines = _python(tmp_path, """
        import importlib, json, os, sys, time
        sys.path.insert(0, os.getcwd())
        import hlp_r, pipe_r
        print(json.dumps(pipe_r.p.run(n=3).value))      # the worker imports x*2
        time.sleep(1.1)
        open("hlp_r.py", "w").write("def f(x):\\n    return x * 3\\n")
        importlib.reload(hlp_r)
        r = pipe_r.p.run(n=3)
        print(json.dumps({"value": r.value}))
    """)
    assert json.loads(lines[0]) == [6, 6]
    assert json.loads(lines[1])["value"] == [9, 9]      # was [6, 9]: the worker's old module


def test_a_helper_edited_on_disk_after_versioning_is_not_what_the_worker_runs(tmp_path) -> None:
    _helper(tmp_path / "hlp_e.py", 2)
    (tmp_path / "pipe_e.py").write_text(PIPE.format(helper="hlp_e", name="edited_s28"))
    script = """
        import json, os, sys
        sys.path.insert(0, os.getcwd())
        import hlp_e, pipe_e
        pipe_e.in_process.spec                          # versioned with x*2, as loaded
        if sys.argv[-1] != "plain":
            open("hlp_e.py", "w").write("def f(x):\\n    return x * 3\\n")
        print(json.dumps(pipe_e.p.run(n=3).value))
    """
    assert [json.loads(x) for x in _python(tmp_path, script)] == [[6, 6]]    # was [9, 6]
    _helper(tmp_path / "hlp_e.py", 2)                   # the edit undone: the same key
    assert [json.loads(x) for x in _python(tmp_path, script)] == [[6, 6]]


def test_two_directories_with_a_same_named_helper(tmp_path: Path) -> None:
    for d, factor in (("a", 2), ("b", 1000)):
        (tmp_path / d).mkdir()
        _helper(tmp_path / d / "helpers.py", factor)
    (tmp_path / "a" / "pa.py").write_text(PIPE.format(helper="helpers", name="pa_s28"))
    (tmp_path / "b" / "pb.py").write_text(PIPE.format(helper="helpers", name="pb_s28"))
    lines = _python(tmp_path, """
        import json
        from twingraph.cli.loading import load_module       # as `server --load` loads them
        ma = load_module("a/pa.py")
        mb = load_module("b/pb.py")
        print(json.dumps(ma.p.run(n=3).value))
    """)
    assert json.loads(lines[0]) == [6, 6]                   # was [3000, 6]


def test_a_reused_worker_never_executes_a_module_twice(tmp_path: Path) -> None:
    """Regression review: a worker that had imported a module from disk got its text later
    and executed it again: an enum compared with ``is`` came from the second execution, and
    ``util.Color`` from the first (False where True was right); a module registering
    something at import raised "registered already"."""
    (tmp_path / "models_s28.py").write_text(textwrap.dedent("""
        import enum
        print("models executed", flush=True)

        class Color(enum.Enum):
            RED = 1
    """))
    (tmp_path / "util_s28.py").write_text(textwrap.dedent("""
        from models_s28 import Color

        def is_red(c):
            return c is Color.RED
    """))
    (tmp_path / "comps_s28.py").write_text(textwrap.dedent("""
        import models_s28, util_s28
        from twingraph import component, pipeline

        @component(executor="process", cache=False)
        def first(c, check):           # reads no module: util and models come from disk
            return check(c)

        @component(executor="process", cache=False)
        def second(c):                 # its texts name util and models
            return util_s28.is_red(c)

        @pipeline(name="reused_s28")
        def p():
            red = models_s28.Color.RED
            a = first(c=red, check=util_s28.is_red)["outputs"]["result"]
            return [a, second(c=red)["outputs"]["result"]]
    """))
    lines = _python(tmp_path, """
        import json, os, sys
        sys.path.insert(0, os.getcwd())
        from twingraph.engine.engine import Engine
        from twingraph.executors.local import LocalExecutor
        from twingraph.stores.metadata import MemoryMetadataStore
        from twingraph.stores.results.memory import MemoryStorage
        import comps_s28
        eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore(),
                     executor=LocalExecutor(max_processes=1), flush_interval=0.01)
        try:
            r = comps_s28.p.run(engine=eng)
            print(json.dumps([r.value, str(r.error)]))
        finally:
            eng.close()
    """)
    assert json.loads(lines[-1]) == [[True, True], "None"]


def test_from_imports_constants_resources_and_dag_nodes_in_processes(tmp_path: Path) -> None:
    """Regression review: ``from hlp import f`` and a module of constants were not sent (the
    edit on disk ran under the old key); a package's ``importlib.resources`` broke in a module
    served from the driver's text; a DAG node in a process got no texts at all."""
    _helper(tmp_path / "hlp_f.py", 2)
    (tmp_path / "cfg_s28.py").write_text("FACTOR = 10\n")
    pkg = tmp_path / "dpkg_s28"
    pkg.mkdir()
    (pkg / "table.txt").write_text("42")
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import importlib.resources

        def load():
            return int(importlib.resources.files(__package__).joinpath("table.txt").read_text())
    """))
    (tmp_path / "pipe_f.py").write_text(textwrap.dedent("""
        from hlp_f import f
        import cfg_s28, dpkg_s28
        from twingraph import component, operation, pipeline

        @component(executor="process")
        def calc(n):
            return f(n) * cfg_s28.FACTOR + dpkg_s28.load()

        @pipeline(name="from_imports_s28")
        def p(n: int = 3):
            return calc(n=n)["outputs"]["result"]

        @operation("calc_s28")
        def calc_op(deps, params):
            return f(params["n"]) * cfg_s28.FACTOR
    """))
    lines = _python(tmp_path, """
        import json, os, sys
        sys.path.insert(0, os.getcwd())
        import pipe_f
        from twingraph.core.codeversion import code_version
        from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, NodeDefinition
        from twingraph.engine.engine import Engine
        from twingraph.stores.metadata import MemoryMetadataStore
        from twingraph.stores.results.memory import MemoryStorage
        pipe_f.calc.spec                             # versioned as loaded
        code_version(pipe_f.calc_op)
        open("hlp_f.py", "w").write("def f(x):\\n    return x * 3\\n")
        open("cfg_s28.py", "w").write("FACTOR = 1000\\n")
        print(json.dumps([pipe_f.p.run(n=3).value]))
        st = MemoryStorage()
        eng = Engine(results=st, metadata=MemoryMetadataStore(), flush_interval=0.01)
        sched = DynamicScheduler(st, engine=eng, isolate=True)    # as the server runs nodes
        try:
            r = sched.run(DAGDefinition("d", [NodeDefinition("a", "calc_s28", [], {"n": 3})]))
            print(json.dumps([r.state.name,
                              sched.node_results("d")["a"].result_data]))
        finally:
            sched.close()
            eng.close()
    """)
    assert json.loads(lines[0]) == [6 * 10 + 42]         # was 9 * 1000 + 42 (and no 42)
    assert json.loads(lines[1]) == ["SUCCESS", 60]       # was 9000: read from disk
