"""The embedded default's home: each result-store kind keeps its own files, so switching
``TWINGRAPH_RESULT_STORE`` on one home never opens one kind's files as another's; and
``TWINGRAPH_COMPRESSION``'s spellings of "off" (``monkeypatch`` only sets that variable and
``TWINGRAPH_HOME``; nothing is patched)."""
from __future__ import annotations

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.errors import ConfigurationError
from twingraph.runtime import build_engine
from twingraph.settings import Settings


@component
def triple(x):
    return 3 * x


@pipeline(name="home_switch")
def p(x: int):
    return triple(x=x)


def _run(home, kind):
    eng = build_engine(Settings(home=home, database_url=f"sqlite:///{home}/tg.db",
                                result_store=kind))
    try:
        r = p.run(x=4, engine=eng)
        assert r.state is RunState.SUCCESS, r.error
        assert r.value["outputs"]["result"] == 12
        [task] = eng.metadata.get_tasks(r.run_id)
        return task.cache_status
    finally:
        eng.close()


def test_switching_the_result_store_kind_on_one_home(tmp_path):
    """Hybrid took ``results.db`` as its directory: on a home that had used SQLite it failed
    with "File exists"; on a fresh one it made a directory that then broke SQLite."""
    assert _run(tmp_path, "sqlite") == "miss"
    assert _run(tmp_path, "hybrid") == "miss"          # a store of its own: empty
    assert _run(tmp_path, "hybrid") == "hit"
    assert _run(tmp_path, "sqlite") == "hit"           # the SQLite file is untouched
    assert _run(tmp_path, "filesystem") == "miss"
    assert (tmp_path / "results.db").is_file()
    assert (tmp_path / "results-hybrid").is_dir() and (tmp_path / "results").is_dir()


def test_a_hybrid_store_made_before_keeps_its_place(tmp_path):
    """A home whose hybrid store was made in ``results.db/`` (before the kinds had names of
    their own) keeps using it: its results are still hits."""
    from twingraph.stores.results.hybrid import HybridStorage
    HybridStorage(tmp_path / "results.db").close()     # as an older TwinGraph left it
    assert _run(tmp_path, "hybrid") == "miss"
    assert _run(tmp_path, "hybrid") == "hit"
    assert not (tmp_path / "results-hybrid").exists()


@pytest.mark.parametrize("value, means", [("", None), ("none", None), ("None", None),
                                          ("OFF", None), (" off ", None), ("ZSTD", "zstd")])
def test_compression_spellings(monkeypatch, tmp_path, value, means):
    monkeypatch.setenv("TWINGRAPH_HOME", str(tmp_path))
    monkeypatch.setenv("TWINGRAPH_COMPRESSION", value)
    assert Settings.from_env().compression == means


def test_an_unknown_compression_names_the_choices(tmp_path):
    with pytest.raises(ConfigurationError, match="'zstd', or none"):
        build_engine(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db",
                              compression="gzip"))
