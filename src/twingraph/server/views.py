"""How stored objects look on the wire (JSON-able dicts), shared by the faces."""

from __future__ import annotations

from typing import Any

from twingraph.core.records import LogRecord, TaskRecord
from twingraph.server.envelope import iso
from twingraph.stores.metadata.catalog import PipelineRecord, PipelineVersionRecord, ProjectRecord
from twingraph.stores.metadata.catalog_store import RunRow


def project(p: ProjectRecord, pipelines: list[PipelineRecord] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": p.id, "name": p.name, "description": p.description,
                           "owner": p.owner, "metadata": p.metadata,
                           "created_at": iso(p.created_at), "updated_at": iso(p.updated_at)}
    if pipelines is not None:
        out["pipelines"] = [{"id": x.id, "name": x.name, "nodes": node_ids(x.definition)}
                            for x in pipelines]
    return out


def node_ids(definition: dict[str, Any]) -> list[str]:
    nodes = definition.get("nodes")
    if isinstance(nodes, list):
        return [str(n.get("id")) for n in nodes if isinstance(n, dict)]
    return list(definition.get("components", []))


def pipeline(p: PipelineRecord) -> dict[str, Any]:
    d = p.definition
    return {"id": p.id, "project_id": p.project_id, "name": p.name,
            "description": p.description, "kind": "python" if d.get("kind") == "python" else "graph",
            "nodes": d.get("nodes", [{"id": c, "type": "component", "component": c}
                                     for c in d.get("components", [])]),
            "edges": d.get("edges", []), "definition": d, "current_version": p.current_version,
            "schedule": p.schedule, "tags": p.tags,
            "created_at": iso(p.created_at), "updated_at": iso(p.updated_at)}


def version(v: PipelineVersionRecord) -> dict[str, Any]:
    return {"pipeline_id": v.pipeline_id, "version": v.version, "definition": v.definition,
            "source_hash": v.source_hash, "created_at": iso(v.created_at)}


def run(r: RunRow, progress: dict[str, Any]) -> dict[str, Any]:
    return {"id": r.run_id, "project_id": r.project_id, "project": r.project,
            "pipeline_id": r.pipeline_id, "pipeline_name": r.pipeline,
            "pipeline_version": r.pipeline_version, "state": r.state.value, "params": r.params,
            "tags": r.tags, "config": r.config, "schedule_id": r.schedule_id,
            "created_at": iso(r.created_at), "started_at": iso(r.started_at),
            "ended_at": iso(r.ended_at), "duration_seconds": r.duration, "error": r.error,
            "progress": progress}


def task(t: TaskRecord) -> dict[str, Any]:
    duration = (t.ended_at - t.started_at) if t.started_at and t.ended_at else None
    return {"id": t.node_id, "run_id": t.run_id, "component": t.component,
            "state": t.state.value, "platform": t.platform, "attempts": t.attempts,
            "cache_status": t.cache_status, "cache_reason": t.cache_reason,
            "content_hash": t.content_hash, "created_at": iso(t.created_at),
            "started_at": iso(t.started_at), "ended_at": iso(t.ended_at),
            "duration_seconds": duration, "error": t.error,
            "labels": (t.inputs or {}).get("labels", {})}


def log(entry: LogRecord) -> dict[str, Any]:
    return {"timestamp": iso(entry.at), "level": entry.level.upper(), "message": entry.message,
            "task_id": entry.node_id, "run_id": entry.run_id}
