from tests.resources import documented as doc
from twingraph.core.states import RunState
from twingraph.testing import memory_engine


def test_memory_engine_runs_and_records_a_pipeline():
    eng = memory_engine()
    doc.reset()
    r = doc.process_pipeline.run(engine=eng, n=3, delay=0)
    assert r.state is RunState.SUCCESS and r.value["outputs"]["n"] == 3
    assert len(eng.metadata.get_tasks(r.run_id)) == 5
    eng.close()
