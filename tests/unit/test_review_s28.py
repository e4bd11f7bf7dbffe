"""Small things the session 28 review found."""
from __future__ import annotations

import sqlite3

from twingraph.core.logtext import capped
from twingraph.stores.results.sqlite import SQLiteStorage


def test_a_store_that_cannot_be_opened_for_writing_is_named_once_with_what_to_do(tmp_path):
    store = SQLiteStorage(str(tmp_path / "results.db"))
    try:
        err = store._error("open", str(store.db_path),
                           sqlite3.OperationalError("attempt to write a readonly database"))
    finally:
        store.close()
    text = str(err)
    assert text.count("results.db") == 1, text        # was named twice, as a key and a file
    assert "runs list" in text


def test_capped_keeps_the_head_and_the_tail() -> None:
    text = "a" * 100 + "b" * 100
    assert capped(text, 1000) is text
    cut = capped(text, 40)
    assert cut.startswith("a" * 30) and cut.endswith("b" * 10)
    assert "160 characters cut" in cut


def test_a_code_version_with_a_non_module_in_sys_modules(monkeypatch) -> None:
    """Some libraries put objects that are not modules in ``sys.modules``: pinning module
    texts with a version (session 28) called ``vars()`` on one, which has no ``__dict__``."""
    import json
    import sys

    from twingraph.core.codeversion import code_modules, code_version

    class NotAModule:
        __slots__ = ()

    monkeypatch.setitem(sys.modules, "not_a_module_s28", NotAModule())

    def f(x):
        return json.dumps(x)

    f.__module__ = "not_a_module_s28"
    assert len(code_version(f)) == 16
    assert "not_a_module_s28" not in [name for name, _, _ in code_modules(f)]
