"""A run's lineage graph as a GraphSON 3.0 file that Apache TinkerGraph reads back.

The format is TinkerPop's GraphSON 3.0 *adjacency list* (what ``GraphSONWriter.writeGraph``
writes and ``graph.io(IoCore.graphson()).readGraph(path)`` reads): one JSON object per line,
one line per vertex, each vertex carrying its own edges twice over — ``outE`` on the source
vertex (with ``inV``) and ``inE`` on the target (with ``outV``), grouped by edge label::

    {"id": "r1/load-0", "label": "Component",
     "outE": {"DEPENDS_ON": [{"id": "r1/e0", "inV": "r1/agg-0", "properties": {...}}]},
     "properties": {"name": [{"id": {"@type": "g:Int64", "@value": 0}, "value": "load"}]}}

Values are typed the GraphSON 3.0 way: strings and booleans are plain JSON, integers are
``g:Int32``/``g:Int64``, floats ``g:Double``, ``datetime`` ``g:Date`` (epoch milliseconds).
Dicts and lists become JSON text (the architecture document types ``data_flow``/``inputs`` as
json, and Neptune has no map or list properties); ``None`` is left out (TinkerGraph refuses
null property values). Every vertex property gets an id (``g:Int64``, numbered in file order)
as TinkerPop writes them. An edge whose end is not a vertex of the file is left out: TinkerGraph's
reader rejects the whole file for one dangling edge.

``graphson_lines`` is pure; ``write_graphson`` writes atomically (temporary file in the same
directory, fsync, rename), so a reader sees the old file or the new one, never a partial one;
``export_run`` writes one run's lineage (``twingraph.lineage.run_lineage``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from twingraph.core.records import EdgeRecord
from twingraph.lineage import Vertex, run_lineage
from twingraph.ports import MetadataStore

_INT32 = 2 ** 31
_INT64 = 2 ** 63


def typed(value: Any) -> Any:
    """``value`` in GraphSON 3.0's typed form (see the module docstring)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, int):
        if -_INT32 <= value < _INT32:
            return {"@type": "g:Int32", "@value": value}
        if -_INT64 <= value < _INT64:
            return {"@type": "g:Int64", "@value": value}
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return {"@type": "g:Double", "@value": "NaN"}
        if math.isinf(value):
            return {"@type": "g:Double", "@value": "Infinity" if value > 0 else "-Infinity"}
        return {"@type": "g:Double", "@value": value}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return {"@type": "g:Date", "@value": round(value.timestamp() * 1000)}
    return json.dumps(value, sort_keys=True, default=str)


def _edge_props(props: dict[str, Any]) -> dict[str, Any]:
    return {k: typed(v) for k, v in props.items() if v is not None}


def graphson_lines(vertices: Iterable[Vertex], edges: Iterable[EdgeRecord], *,
                   edge_id_prefix: str = "e") -> list[str]:
    """One JSON line per vertex (in the order given), with its edges as ``outE``/``inE``.

    Vertex ids are written as given (a string id stays a string); edge ``i`` (in the order
    given, dangling edges left out) gets the id ``f"{edge_id_prefix}{i}"``.
    """
    verts = list(vertices)
    known = {v.id for v in verts}
    out_e: dict[str, dict[str, list[dict[str, Any]]]] = {}
    in_e: dict[str, dict[str, list[dict[str, Any]]]] = {}
    n = 0
    for e in edges:
        if e.src not in known or e.dst not in known:
            continue
        eid, eprops = f"{edge_id_prefix}{n}", _edge_props(dict(e.properties or {}))
        n += 1
        out_e.setdefault(e.src, {}).setdefault(e.kind, []).append(
            {"id": eid, "inV": typed(e.dst), "properties": eprops})
        in_e.setdefault(e.dst, {}).setdefault(e.kind, []).append(
            {"id": eid, "outV": typed(e.src), "properties": eprops})
    lines, prop_id = [], 0
    for v in verts:
        obj: dict[str, Any] = {"id": typed(v.id), "label": v.label}
        if v.id in out_e:
            obj["outE"] = out_e[v.id]
        if v.id in in_e:
            obj["inE"] = in_e[v.id]
        props: dict[str, list[dict[str, Any]]] = {}
        for k, val in v.properties.items():
            if val is None:
                continue
            props[k] = [{"id": {"@type": "g:Int64", "@value": prop_id}, "value": typed(val)}]
            prop_id += 1
        obj["properties"] = props
        lines.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
    return lines


def write_graphson(path: str | os.PathLike[str], lines: Sequence[str]) -> Path:
    """Write ``lines`` to ``path`` atomically (its directory is created if missing); returns
    the absolute path. On any error the old file, if there was one, is left as it was."""
    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def run_graph(metadata: MetadataStore, run_id: str) -> tuple[list[Vertex], list[EdgeRecord]]:
    """``run_lineage`` made ready for a shared graph: task vertex ids are qualified with the
    run id (``f"{run_id}/{node_id}"``, the node id kept as the ``node_id`` property) so the
    files of several runs load into one TinkerGraph without id clashes; times become dates."""
    vertices, edges = run_lineage(metadata, run_id)
    ids = {v.id: v.id if v.label == "Pipeline" else f"{run_id}/{v.id}" for v in vertices}
    out = []
    for v in vertices:
        props = dict(v.properties)
        if v.label != "Pipeline":
            props["node_id"] = v.id
        for k in ("started_at", "completed_at"):
            if isinstance(props.get(k), (int, float)):
                props[k] = date_of(props[k])
        out.append(Vertex(ids[v.id], v.label, props))
    return out, [EdgeRecord(e.run_id, ids.get(e.src, e.src), ids.get(e.dst, e.dst), e.kind,
                            dict(e.properties)) for e in edges]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def date_of(timestamp: float) -> datetime:
    """The UTC date of a store's epoch-seconds float, at the millisecond a ``g:Date`` holds:
    ``round(timestamp * 1000)``, exactly. (``datetime.fromtimestamp`` rounds to microseconds
    first, and about one timestamp in 2,500 then lands on the other millisecond.)"""
    return _EPOCH + timedelta(milliseconds=round(timestamp * 1000))


def export_run(metadata: MetadataStore, run_id: str, path: str | os.PathLike[str]) -> Path:
    """Write run ``run_id``'s lineage graph to ``path`` (``{run_id}`` in it is replaced by the
    run id; a relative path is taken from the current directory). Returns the path written.
    Raises ``OSError`` if it cannot be written (the old file is then left as it was)."""
    vertices, edges = run_graph(metadata, run_id)
    lines = graphson_lines(vertices, edges, edge_id_prefix=f"{run_id}/e")
    return write_graphson(os.fspath(path).replace("{run_id}", run_id), lines)
