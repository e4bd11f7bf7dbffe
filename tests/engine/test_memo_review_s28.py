"""Memo keys (session 28 review): a component the pipeline's code does not name is refreshed
after a reload too, and NaNs that Python tells apart are keyed apart."""
from __future__ import annotations

import importlib
import math
import sys
import time

from twingraph import component, pipeline, registry


def test_a_component_found_by_name_takes_its_new_version_after_a_reload(engine, tmp_path,
                                                                        monkeypatch) -> None:
    helper = tmp_path / "hlp_named_s28.py"
    helper.write_text("def f(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    import hlp_named_s28 as hlp   # type: ignore[import-not-found]

    @component(name="named_s28")
    def named_s28(n):
        return hlp.f(n)

    @pipeline(name="by_name_s28")
    def by_name(n: int):
        step = registry.get_component("named_s28")    # not named in the body's code
        return step(n=n)

    try:
        first = by_name.run(engine=engine, n=3)
        assert first.value["outputs"]["result"] == 6
        time.sleep(1.1)                                # a new mtime for the import system
        helper.write_text("def f(x):\n    return x * 3\n")
        importlib.reload(hlp)
        again = by_name.run(engine=engine, n=3)
        assert again.value["outputs"]["result"] == 9   # was 6: a stale hit
        assert again.value["hash"] != first.value["hash"]
        new = by_name.run(engine=engine, n=4)
        assert new.value["outputs"]["result"] == 12
    finally:
        registry.unregister_component("named_s28")
        sys.modules.pop("hlp_named_s28", None)


def test_nan_and_minus_nan_are_keyed_apart(engine) -> None:
    @component
    def sign_s28(x):
        return math.copysign(1.0, x)

    @pipeline(name="nan_sign_s28")
    def signs():
        nan = float("nan")
        return [sign_s28(x=nan)["outputs"]["result"], sign_s28(x=-nan)["outputs"]["result"]]

    assert signs.run(engine=engine).value == [1.0, -1.0]     # was [1.0, 1.0]: one twin
