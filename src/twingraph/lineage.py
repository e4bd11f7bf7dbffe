"""The lineage graph of a run, as the architecture document draws it.

Vertices: one ``Component`` per task (name, hash, status, platform, times) and one ``Pipeline``
for the run. Edges: ``DEPENDS_ON`` (producer -> consumer, ``data_flow`` = the output path that
flowed) and ``BELONGS_TO`` (task -> pipeline, ``component_order``). Both are derived from the
task rows — each task records the producers it read (``inputs['deps']``) and its call order —
rather than written as a row per edge, which would double or triple the rows written per task
on the engine's hot path. Edges written explicitly with ``EdgeRecord`` are included too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twingraph.core.records import EdgeRecord, RunRecord, TaskRecord
from twingraph.ports import MetadataStore


@dataclass(frozen=True)
class Vertex:
    id: str
    label: str                          # 'Component' | 'Pipeline'
    properties: dict[str, Any] = field(default_factory=dict)


def run_lineage(metadata: MetadataStore, run_id: str) -> tuple[list[Vertex], list[EdgeRecord]]:
    run = metadata.get_run(run_id)
    if run is None:
        return [], []
    tasks = metadata.get_tasks(run_id)
    vertices = [pipeline_vertex(run)]
    edges = [e for e in metadata.get_edges(run_id) if e.kind == "DEPENDS_ON"]
    for t in tasks:
        edges.extend(depends_on(run_id, t))
    for t in tasks:
        vertices.append(task_vertex(run_id, t))
        edges.append(belongs_to(run_id, t))
    return vertices, edges


# -- one vertex or edge at a time: what run_lineage is made of, and what the GraphSON export
#    (twingraph.graphson.export_run) streams page by page without holding the whole run ------
def pipeline_vertex(run: RunRecord) -> Vertex:
    return Vertex(run.run_id, "Pipeline", {"name": run.pipeline, "pipeline_id": run.pipeline,
                                           "version": run.pipeline_version})


def task_vertex(run_id: str, t: TaskRecord) -> Vertex:
    return Vertex(t.node_id, "Component", {
        "name": t.component, "execution_id": run_id, "hash": t.cache_key,
        "status": t.state.value, "platform": t.platform, "started_at": t.started_at,
        "completed_at": t.ended_at, "cache": t.cache_status,
        "labels": (t.inputs or {}).get("labels") or None})


def depends_on(run_id: str, t: TaskRecord) -> list[EdgeRecord]:
    """The DEPENDS_ON edges into task ``t``: one per producer it read, ``data_flow`` the first
    output path read from it, and ``data_flows`` every path when it read several
    (``r['outputs']['train']`` and ``r['outputs']['test']``, or a chunk and ``r['hash']``)."""
    read: dict[str, list[Any]] = {}
    for src, path in (t.inputs or {}).get("deps", ()):
        read.setdefault(src, []).append(path)
    out = []
    for src, paths in read.items():
        props: dict[str, Any] = {"data_flow": paths[0]}
        if len(paths) > 1:
            props["data_flows"] = paths
        out.append(EdgeRecord(run_id, src, t.node_id, "DEPENDS_ON", props))
    return out


def belongs_to(run_id: str, t: TaskRecord) -> EdgeRecord:
    return EdgeRecord(run_id, t.node_id, run_id, "BELONGS_TO", {"component_order": t.order})
