"""Wrong memo hits a review found (session 29, decision 0091): each scenario runs a pipeline
file in a real `python` process, edits a file, and runs it again in a new process on the same
SQLite home. The second run must give what the edited code gives; before the fixes each one
was served the first run's stored result."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

RUN = '\nif __name__ == "__main__":\n    print(main.run().unwrap()["outputs"]["result"])\n'

SCENARIOS = {
    # a lambda whose body goes on below its first line was keyed by that line alone
    "lambda_argument": ({"flow.py": """
        from twingraph import component, pipeline

        @component
        def apply(fn, x: int) -> int:
            return fn(x)

        @pipeline(name="lam_arg")
        def main():
            return apply(
                fn=lambda v:
                    v * 3,
                x=2)
        """}, ("flow.py", "v * 3", "v + 3"), "6", "5"),
    "lambda_in_a_helper": ({"helpers.py": """
        scale = (
            lambda v:
                v * 3
        )
        """, "flow.py": """
        from twingraph import component, pipeline
        import helpers

        @component
        def apply(x: int) -> int:
            return helpers.scale(x)

        @pipeline(name="lam_mod")
        def main():
            return apply(x=2)
        """}, ("helpers.py", "v * 3", "v + 3"), "6", "5"),
    # a library wrapper (lru_cache) given as an argument was keyed by its name
    "cached_function_argument": ({"helpers.py": """
        import functools

        @functools.lru_cache(maxsize=None)
        def transform(v):
            return v * 2
        """, "flow.py": """
        from twingraph import component, pipeline
        import helpers

        @component
        def apply(fn, x: int) -> int:
            return fn(x)

        @pipeline(name="cached_fn_arg")
        def main():
            return apply(fn=helpers.transform, x=5)
        """}, ("helpers.py", "v * 2", "v * 3"), "10", "15"),
    # a zone-aware constant was keyed by str(), which shows the offset only
    "time_zone_constant": ({"flow.py": """
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo
        from twingraph import component, pipeline

        START = datetime(2020, 3, 28, 12, tzinfo=ZoneInfo("Europe/Paris"))

        @component
        def deadline(days: int) -> str:
            return (START + timedelta(days=days)).isoformat()

        @pipeline(name="tz_constant")
        def main():
            return deadline(days=2)
        """}, ("flow.py", 'ZoneInfo("Europe/Paris")', 'ZoneInfo("Africa/Lagos")'),
        "2020-03-30T12:00:00+02:00", "2020-03-30T12:00:00+01:00"),
    # a class component's enum attribute was keyed by the member's name
    "enum_attribute": ({"modes.py": """
        import enum

        class Mode(enum.Enum):
            FAST = 2
            SLOW = 10
        """, "flow.py": """
        from twingraph import BaseComponent, pipeline
        from modes import Mode

        class Scale(BaseComponent):
            def __init__(self, mode):
                super().__init__()
                self.mode = mode

            def execute(self, x: int) -> int:
                return x * self.mode.value

        SCALE = Scale(Mode.FAST)

        @pipeline(name="enum_attr")
        def main():
            return SCALE(x=5)
        """}, ("modes.py", "FAST = 2", "FAST = 3"), "10", "15"),
    # library values in a default, a closure cell, the object of a bound method: by type
    "array_default": ({"flow.py": """
        import numpy as np
        from twingraph import component, pipeline

        WEIGHTS = np.array([1.0, 2.0, 3.0])

        @component
        def score(x: float, w=WEIGHTS) -> float:
            return float(x * w.sum())

        @pipeline(name="default_array")
        def main():
            return score(x=2.0)
        """}, ("flow.py", "[1.0, 2.0, 3.0]", "[1.0, 2.0, 4.0]"), "12.0", "14.0"),
    "array_in_a_closure": ({"flow.py": """
        import numpy as np
        from twingraph import component, pipeline

        def make_scorer(name, w):
            @component(name=name)
            def score(x: float) -> float:
                return float(x * w.sum())
            return score

        score_a = make_scorer("score_a", np.array([1.0, 2.0, 3.0]))

        @pipeline(name="closure_array")
        def main():
            return score_a(x=2.0)
        """}, ("flow.py", "[1.0, 2.0, 3.0]", "[1.0, 2.0, 4.0]"), "12.0", "14.0"),
    # an array held by a function the component reads through a global
    "array_in_a_function_it_reads": ({"flow.py": """
        import numpy as np
        from twingraph import component, pipeline

        def make(table):
            def lookup(i):
                return float(table[i])
            return lookup

        price = make(np.array([10, 20, 30]))

        @component
        def cost(i: int) -> float:
            return price(i)

        @pipeline(name="glob_closure_s29")
        def main():
            return cost(i=2)
        """}, ("flow.py", "[10, 20, 30]", "[10, 20, 99]"), "30.0", "99.0"),
    "bound_method_component": ({"flow.py": """
        from twingraph import component, pipeline

        class Scaler:
            def __init__(self, k):
                self.k = k

            def apply(self, x: int) -> int:
                return x * self.k

        scale = component(name="scale")(Scaler(k=2).apply)

        @pipeline(name="bound_component")
        def main():
            return scale(x=5)
        """}, ("flow.py", "Scaler(k=2)", "Scaler(k=3)"), "10", "15"),
}


def _python(project: Path, home: Path, *args: str) -> str:
    env = dict(os.environ, TWINGRAPH_HOME=str(home), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    out = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_an_edit_is_not_served_the_old_result(tmp_path: Path, name: str) -> None:
    files, (edited, old, new), before, after = SCENARIOS[name]
    for file, text in files.items():
        text = textwrap.dedent(text).lstrip()
        (tmp_path / file).write_text(text + RUN if file == "flow.py" else text)
    home = tmp_path / "home"
    assert _python(tmp_path, home, "flow.py") == before
    text = (tmp_path / edited).read_text()
    (tmp_path / edited).write_text(text.replace(old, new))
    assert _python(tmp_path, home, "flow.py") == after


def test_two_closures_over_different_arrays_in_one_run_are_two_inputs(tmp_path: Path) -> None:
    """Given as arguments, they had one key: one was computed and its result served for both."""
    np = pytest.importorskip("numpy")
    from twingraph import component, pipeline
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    from twingraph.stores.results.sqlite import SQLiteStorage

    def make_scorer(w):
        def score(x):
            return float(x * w.sum())
        return score

    @component
    def apply_s29(fn, x: float) -> float:
        return fn(x)

    @pipeline(name="closure_args_s29")
    def both():
        return [apply_s29(fn=make_scorer(np.array([1.0, 2.0])), x=2.0)["outputs"]["result"],
                apply_s29(fn=make_scorer(np.array([5.0, 5.0])), x=2.0)["outputs"]["result"]]

    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True))
    try:
        assert both.run(engine=eng).unwrap() == [6.0, 20.0]
    finally:
        eng.close()


def test_a_partial_over_an_object_of_the_pipeline_file_hits_in_the_next_process(
        tmp_path: Path) -> None:
    """Pickled, it carried cloudpickle's per-process class id: a miss in every process."""
    (tmp_path / "flow.py").write_text(textwrap.dedent("""
        import functools
        from twingraph import component, pipeline

        class Cfg:
            def __init__(self, k):
                self.k = k

        def scale(x, cfg):
            return x * cfg.k

        @component
        def apply(fn, x: int) -> int:
            return fn(x)

        @pipeline(name="partial_s29")
        def main():
            return apply(fn=functools.partial(scale, cfg=Cfg(3)), x=2)

        if __name__ == "__main__":
            from twingraph.runtime import default_engine
            r = main.run()
            print(r.unwrap()["outputs"]["result"],
                  [t.cache_status for t in default_engine().metadata.get_tasks(r.run_id)])
        """))
    home = tmp_path / "home"
    assert _python(tmp_path, home, "flow.py") == "6 ['miss']"
    assert _python(tmp_path, home, "flow.py") == "6 ['hit']"


def test_a_reload_that_gives_a_closure_new_data_is_seen_in_the_same_process(
        tmp_path: Path) -> None:
    """`price = make([10, 20, 30])` edited and reloaded: the version without values (a list by
    type) was unchanged, and the version was not taken again."""
    (tmp_path / "tables_s29.py").write_text(textwrap.dedent("""
        def make(table):
            def lookup(i):
                return table[i]
            return lookup

        price = make([10, 20, 30])
        """))
    (tmp_path / "flow.py").write_text(textwrap.dedent("""
        import importlib
        from twingraph import component, pipeline
        import tables_s29

        @component
        def cost(i: int) -> int:
            return tables_s29.price(i)

        @pipeline(name="reload_closure_s29")
        def main():
            return cost(i=2)

        first = main.run().unwrap()["outputs"]["result"]
        src = open("tables_s29.py").read()
        open("tables_s29.py", "w").write(src.replace("[10, 20, 30]", "[10, 20, 99]"))
        importlib.reload(tables_s29)
        print(first, main.run().unwrap()["outputs"]["result"])
        """))
    assert _python(tmp_path, tmp_path / "home", "flow.py") == "30 99"
