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
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

from twingraph.core.records import EdgeRecord, TaskRecord
from twingraph.lineage import (Vertex, belongs_to, depends_on, pipeline_vertex, run_lineage,
                              task_vertex)
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
        props, prop_id = _props_text(v.properties, prop_id)
        lines.append(_vertex_text(v.id, v.label, _entries(out_e.get(v.id)),
                                  _entries(in_e.get(v.id)), props))
    return lines


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _entries(by_label: dict[str, list[dict[str, Any]]] | None) -> dict[str, list[str]]:
    return {k: [_dumps(e) for e in es] for k, es in (by_label or {}).items()}


def _edge_text(eid: str, end: str, other: Any, props: dict[str, Any]) -> str:
    """One edge of a vertex's ``outE`` (``end`` = ``"inV"``) or ``inE`` (``"outV"``)."""
    return _dumps({"id": eid, end: typed(other), "properties": _edge_props(props)})


def _props_text(properties: dict[str, Any], prop_id: int) -> tuple[str, int]:
    """A vertex's ``properties`` object (``None`` values left out), its property ids numbered
    from ``prop_id``; and the next free id."""
    props: dict[str, list[dict[str, Any]]] = {}
    for k, val in properties.items():
        if val is None:
            continue
        props[k] = [{"id": {"@type": "g:Int64", "@value": prop_id}, "value": typed(val)}]
        prop_id += 1
    return _dumps(props), prop_id


def _group_text(by_label: dict[str, list[str]]) -> str:
    return "{" + ",".join(f"{_dumps(k)}:[{','.join(es)}]" for k, es in by_label.items()
                          if es) + "}"


def _vertex_text(vid: Any, label: str, out_e: dict[str, list[str]],
                 in_e: dict[str, list[str]], props: str) -> str:
    """One line of the file: ``id``, ``label``, ``outE``/``inE`` (only when the vertex has
    such edges; ``out_e``/``in_e`` map edge labels to rendered edges), ``properties``."""
    head = f'{{"id":{_dumps(typed(vid))},"label":{_dumps(label)}'
    if any(out_e.values()):
        head += ',"outE":' + _group_text(out_e)
    if any(in_e.values()):
        head += ',"inE":' + _group_text(in_e)
    return head + ',"properties":' + props + "}"


def write_graphson(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write ``lines`` to ``path`` atomically (its directory is created if missing); returns
    the absolute path. On any error the old file, if there was one, is left as it was."""
    return _write_atomic(path, (line + "\n" for line in lines))


def _write_atomic(path: str | os.PathLike[str], chunks: Iterable[str]) -> Path:
    """Write the text ``chunks`` (consumed as they come) to ``path`` atomically."""
    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
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
    out = [_graph_vertex(run_id, v) for v in vertices]
    return out, [EdgeRecord(e.run_id, ids.get(e.src, e.src), ids.get(e.dst, e.dst), e.kind,
                            dict(e.properties)) for e in edges]


def _graph_vertex(run_id: str, v: Vertex) -> Vertex:
    """``v`` as ``run_graph`` writes it: a task's id qualified, its times dates."""
    props = dict(v.properties)
    if v.label != "Pipeline":
        props["node_id"] = v.id
    for k in ("started_at", "completed_at"):
        if isinstance(props.get(k), (int, float)):
            props[k] = date_of(props[k])
    return Vertex(v.id if v.label == "Pipeline" else f"{run_id}/{v.id}", v.label, props)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def date_of(timestamp: float) -> datetime:
    """The UTC date of a store's epoch-seconds float, at the millisecond a ``g:Date`` holds:
    ``round(timestamp * 1000)``, exactly. (``datetime.fromtimestamp`` rounds to microseconds
    first, and about one timestamp in 2,500 then lands on the other millisecond.)"""
    return _EPOCH + timedelta(milliseconds=round(timestamp * 1000))


def export_run(metadata: MetadataStore, run_id: str, path: str | os.PathLike[str], *,
               page: int | None = None) -> Path:
    """Write run ``run_id``'s lineage graph to ``path`` (``{run_id}`` in it is replaced by the
    run id; a relative path is taken from the current directory). Returns the path written.
    Raises ``OSError`` if it cannot be written (the old file is then left as it was).

    The file is the graph of ``run_graph``, streamed: the run's tasks are read ``page`` at a
    time, twice (see ``graphson_chunks``), never all at once."""
    return _write_atomic(os.fspath(path).replace("{run_id}", run_id),
                         graphson_chunks(metadata, run_id, page=page or EXPORT_PAGE))


#: Tasks read at a time by ``export_run``.
EXPORT_PAGE = 5000


def _task_pages(metadata: MetadataStore, run_id: str, page: int) -> Iterator[list[TaskRecord]]:
    """The run's tasks in call order, ``page`` at a time (a store whose ``get_tasks`` takes no
    paging gives them in one piece)."""
    get = cast(Any, metadata).get_tasks
    offset = 0
    while True:
        try:
            rows = get(run_id, limit=page, offset=offset)
        except TypeError:
            yield metadata.get_tasks(run_id)
            return
        if rows:
            yield rows
        if len(rows) < page:
            return
        offset += page


def graphson_chunks(metadata: MetadataStore, run_id: str, *,
                    page: int = EXPORT_PAGE) -> Iterator[str]:
    """The text of ``run_graph(metadata, run_id)`` as a GraphSON file, in pieces, holding one
    page of tasks and the run's edges (rendered, one short string each) rather than the run.

    Two passes over the tasks: the first writes the Pipeline line, whose ``inE`` holds every
    task's BELONGS_TO edge, and gathers each producer's DEPENDS_ON ``outE``; the second writes
    one line per task. Edge ids are made from the task they lead into, so both passes name an
    edge alike without a table of numbers: ``{run_id}/{node_id}/d{k}`` for the ``k``-th
    producer a task read, ``{run_id}/{node_id}/b`` for its BELONGS_TO edge (``{run_id}/x{i}``
    for edges a store recorded as rows). A task that appears only in the second pass (written
    meanwhile) is left out, as is a producer that is not a task of the run."""
    run = metadata.get_run(run_id)
    if run is None:
        return
    qid = f"{run_id}/".__add__
    out_adj: dict[str, list[str]] = {}
    in_adj: dict[str, list[str]] = {}
    explicit = [e for e in metadata.get_edges(run_id) if e.kind == "DEPENDS_ON"]
    known: set[str] = set()
    pipe = _graph_vertex(run_id, pipeline_vertex(run))
    head = f'{{"id":{_dumps(typed(pipe.id))},"label":"Pipeline"'
    belongs = 0
    for rows in _task_pages(metadata, run_id, page):
        for t in rows:
            if t.node_id in known:
                continue
            known.add(t.node_id)
            b = belongs_to(run_id, t)
            text = _edge_text(qid(t.node_id) + "/b", "outV", qid(t.node_id), b.properties)
            yield (head + ',"inE":{"BELONGS_TO":[' if belongs == 0 else ",") + text
            belongs += 1
            for k, e in enumerate(depends_on(run_id, t)):
                out_adj.setdefault(e.src, []).append(
                    _edge_text(f"{qid(t.node_id)}/d{k}", "inV", qid(t.node_id), e.properties))
    ids = {n: qid(n) for n in known}
    ids[run_id] = run_id
    for i, e in enumerate(explicit):         # edges stored as rows (none by default)
        if e.src in ids and e.dst in ids:
            eid = f"{run_id}/x{i}"
            out_adj.setdefault(e.src, []).append(_edge_text(eid, "inV", ids[e.dst], e.properties))
            in_adj.setdefault(e.dst, []).append(_edge_text(eid, "outV", ids[e.src], e.properties))
    # The Pipeline line, its BELONGS_TO edges written above.
    tail = "]" if belongs else head
    more_in = in_adj.pop(run_id, None)
    if more_in:
        tail += (',"DEPENDS_ON":[' if belongs else ',"inE":{"DEPENDS_ON":[') + ",".join(more_in) + "]"
    if belongs or more_in:
        tail += "}"
    out_pipe = out_adj.pop(run_id, None)
    if out_pipe:
        tail += ',"outE":' + _group_text({"DEPENDS_ON": out_pipe})
    props, prop_id = _props_text(pipe.properties, 0)
    yield tail + ',"properties":' + props + "}\n"
    done: set[str] = set()
    for rows in _task_pages(metadata, run_id, page):
        for t in rows:
            if t.node_id not in known or t.node_id in done:
                continue
            done.add(t.node_id)
            me = qid(t.node_id)
            inbound = in_adj.pop(t.node_id, [])
            for k, e in enumerate(depends_on(run_id, t)):
                if e.src in known:
                    inbound.append(_edge_text(f"{me}/d{k}", "outV", qid(e.src), e.properties))
            b = belongs_to(run_id, t)
            v = _graph_vertex(run_id, task_vertex(run_id, t))
            props, prop_id = _props_text(v.properties, prop_id)
            yield _vertex_text(v.id, v.label, {
                "DEPENDS_ON": out_adj.pop(t.node_id, []),
                "BELONGS_TO": [_edge_text(me + "/b", "inV", run_id, b.properties)]},
                {"DEPENDS_ON": inbound}, props) + "\n"
