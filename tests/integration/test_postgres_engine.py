"""The engine and the CLI with the metadata store on the machine's real PostgreSQL."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.resources import documented as doc
from twingraph.core.states import RunState, TaskState
from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine(postgres_url, tmp_path):
    eng = Engine(results=SQLiteStorage(str(tmp_path / "results.db")),
                 metadata=SQLMetadataStore(postgres_url, create=True), flush_interval=0.01)
    yield eng
    eng.close()


def test_documented_pipeline_records_on_postgres(pg_engine):
    doc.reset()
    r1 = doc.process_pipeline.run(engine=pg_engine, n=5, delay=0.01)
    r2 = doc.process_pipeline.run(engine=pg_engine, n=5, delay=0.01)
    assert r1.state is RunState.SUCCESS and r2.value == r1.value
    md = pg_engine.metadata
    assert md.get_run(r1.run_id).state is RunState.SUCCESS
    t1 = md.get_tasks(r1.run_id)
    assert len(t1) == 7 and all(t.state is TaskState.SUCCESS for t in t1)
    assert {t.cache_status for t in md.get_tasks(r2.run_id)} == {"hit"}
    from twingraph.lineage import run_lineage
    _, edges = run_lineage(md, r1.run_id)
    assert sum(e.kind == "DEPENDS_ON" for e in edges) == 10
    pipe = md.get_pipeline("default", "documented")
    assert pipe is not None


def test_cli_against_postgres(postgres_url, tmp_path):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"),
               TWINGRAPH_DATABASE_URL=postgres_url, COLUMNS="200")
    run = subprocess.run([sys.executable, "-m", "twingraph", "run",
                          str(ROOT / "examples" / "quickstart.py"), "--param", "n_chunks=3",
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    listing = subprocess.run([sys.executable, "-m", "twingraph", "runs", "list"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert "data_processing_pipeline" in listing.stdout and "SUCCESS" in listing.stdout


@pytest.mark.parametrize("which", ["pg_engine", "sqlite_engine"])
def test_text_no_store_can_hold_is_escaped_not_fatal(which, request):
    """A lone surrogate (``os.fsdecode`` of a file name that is not UTF-8) or a NUL in a log
    line or an error failed the whole write batch: the run was lost from the store, and a
    clean run sharing the batch failed too (PostgreSQL refuses NUL; UTF-8 cannot encode a lone
    surrogate). Both stores now keep the same escaped text."""
    import os

    import twingraph
    from twingraph import component, pipeline
    engine = request.getfixturevalue(which)
    name = os.fsdecode(b"report-\xe9.csv")

    @component(cache=False)
    def scan(fail: bool) -> int:
        twingraph.get_logger().warning("skipping %s (nul:\x00:)", name)
        if fail:
            raise FileNotFoundError(f"{name}\x00")
        return 1

    @pipeline(name=f"odd_text_{which}", error_handler="continue")
    def p(fail: bool):
        return scan(fail=fail)

    bad, good = p.run(True, engine=engine), p.run(False, engine=engine)
    engine.recorder.flush()
    assert bad.state.value == "FAILED" and good.state.value == "SUCCESS"
    (task,) = engine.metadata.get_tasks(bad.run_id)
    assert task.state.value == "FAILED"
    assert task.error == "FileNotFoundError: report-\\udce9.csv\\x00"
    logs = [log.message for log in engine.metadata.get_logs(bad.run_id)]
    assert "skipping report-\\udce9.csv (nul:\\x00:)" in logs
    assert engine.metadata.get_run(good.run_id).state.value == "SUCCESS"
