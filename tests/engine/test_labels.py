"""``@component(labels=...)``: metadata labels for tracking. Every task row of a labelled
component carries them; they show in ``runs show``, in the REST task view and on the task's
Component vertex in the lineage graph. They are not part of the memo key."""
from twingraph import component, pipeline
from twingraph.cli.display import tasks_table
from twingraph.lineage import run_lineage
from twingraph.server import views


@component(labels={"team": "imaging", "tier": "gold"}, resources={"cpu": 2, "memory": "1G"})
def labelled(x: int) -> int:
    return x + 1


@component
def plain(x: int) -> int:
    return x * 2


@pipeline(name="labels_pipe")
def labels_pipe():
    return plain(x=labelled(x=1)["outputs"]["result"])


def test_labels_are_recorded_and_shown_but_not_keyed(engine):
    from rich.console import Console
    r = labels_pipe.run(engine=engine)
    assert r.value["outputs"]["result"] == 4
    tasks = {t.node_id: t for t in engine.metadata.get_tasks(r.run_id)}
    assert tasks["labelled-0"].inputs["labels"] == {"team": "imaging", "tier": "gold"}
    assert "labels" not in tasks["plain-0"].inputs
    assert tasks["labelled-0"].inputs["resources"] == {"cpu": 2, "memory": "1G"}
    assert "resources" not in tasks["plain-0"].inputs
    assert views.task(tasks["labelled-0"])["labels"] == {"team": "imaging", "tier": "gold"}
    assert views.task(tasks["plain-0"])["labels"] == {}
    vertices, _ = run_lineage(engine.metadata, r.run_id)
    props = {v.id: v.properties for v in vertices}
    assert props["labelled-0"]["labels"] == {"team": "imaging", "tier": "gold"}
    assert props["plain-0"]["labels"] is None
    console = Console(width=250, record=True)
    console.print(tasks_table(list(tasks.values())))
    assert "team=imaging, tier=gold" in console.export_text()
    # labels track, they do not define: relabelling hits the memo
    relabelled = component(labelled.fn, name="labelled", labels={"team": "other"})

    @pipeline(name="labels_pipe")
    def again():
        return plain(x=relabelled(x=1)["outputs"]["result"])
    r2 = again.run(engine=engine)
    tasks2 = {t.node_id: t for t in engine.metadata.get_tasks(r2.run_id)}
    assert tasks2["labelled-0"].cache_status == "hit"
    assert tasks2["labelled-0"].inputs["labels"] == {"team": "other"}


def test_label_text_is_shown_as_text(engine):
    from rich.console import Console

    @component(name="marked", labels={"note": "[/bold] not markup"})
    def marked(x: int) -> int:
        return x

    @pipeline(name="markup_labels")
    def p():
        return marked(x=1)
    r = p.run(engine=engine)
    console = Console(width=250, record=True)
    console.print(tasks_table(engine.metadata.get_tasks(r.run_id)))
    assert "note=[/bold] not markup" in console.export_text()
