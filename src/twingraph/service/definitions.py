"""Pipeline definitions as the REST faces send them, checked and compiled for the engine.

Two kinds of definition are stored in ``pipelines.definition``:

- ``{"kind": "python", "module": ..., "qualname": ...}`` — a ``@pipeline`` loaded by the server
  (``--load``). It runs by calling the function with the run's params as keyword arguments.
- a graph: ``{"nodes": [...], "edges": [...], "metadata": {...}}`` in either face's spelling.
  A node is ``{"id", "component" | "operation", "config" | "parameters"}`` (TwinGraph writes
  ``component`` and ``config``); ``type`` is descriptive. An edge is ``{"source", "target",
  "sourceHandle", "targetHandle"}`` (TwinGraph) or ``{"from", "to"}`` (Tauro). An edge whose
  ``targetHandle`` names a parameter passes the upstream value as that keyword argument; an edge
  without one (or with the generic ``input``) passes it positionally, in edge order. A node may
  not mix the two. A ``sourceHandle`` other than the generic ``output`` selects that key of the
  upstream value (``result['outputs'][key]`` for a component's documented result, else
  ``result[key]``).

A config value ``"${params.NAME}"`` is replaced by the run's param ``NAME`` when the run starts,
so a stored graph can take inputs. Every check happens before anything is stored or run; errors
are ``ValidationError`` (``GraphValidationError`` naming the nodes for graph errors) and carry
``details`` — a list of ``{"field", "message"}`` — for the REST faces.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from twingraph.core.graph import validate_dag
from twingraph.dsl.params import (ParamError, build_param, json_fits, param_json_types,
                                  param_text_types)
from twingraph.engine.dynamic import DAGDefinition, NodeDefinition, NodeExecutor
from twingraph.errors import GraphValidationError, ValidationError

GENERIC_HANDLES = frozenset({None, "", "input", "output", "in", "out"})
_PARAM_REF = re.compile(r"^\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}$")


class DefinitionError(ValidationError):
    """A definition that cannot be stored or run; ``details`` lists field-level problems."""

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.details = details or [{"field": "definition", "message": message}]


@dataclass(frozen=True)
class SelectOutput:
    """Operation wrapper input: picks ``key`` of an upstream value (a ``sourceHandle``)."""
    key: str

    def __call__(self, value: Any) -> Any:
        if isinstance(value, Mapping) and "outputs" in value and isinstance(value["outputs"], Mapping) \
                and self.key in value["outputs"]:
            return value["outputs"][self.key]
        if isinstance(value, Mapping):
            return value[self.key]
        return getattr(value, self.key)


def is_python(definition: Mapping[str, Any]) -> bool:
    return definition.get("kind") == "python"


def normalize_graph(definition: Any, known: Callable[[str], bool]) -> dict[str, Any]:
    """Check a graph definition and return it in one spelling (``nodes``/``edges`` with
    ``source``/``target``); ``known(name)`` says whether a component/operation exists."""
    if not isinstance(definition, Mapping):
        raise DefinitionError("definition must be an object with nodes and edges")
    if is_python(definition):
        raise DefinitionError("python pipelines are registered by loading their module "
                              "(twingraph server --load), not over REST")
    nodes, edges = definition.get("nodes"), definition.get("edges", [])
    details: list[dict[str, str]] = []
    if not isinstance(nodes, list) or not nodes:
        raise DefinitionError("definition.nodes must be a non-empty list",
                              [{"field": "definition.nodes", "message": "must be a non-empty list"}])
    if not isinstance(edges, list):
        raise DefinitionError("definition.edges must be a list",
                              [{"field": "definition.edges", "message": "must be a list"}])
    out_nodes: list[dict[str, Any]] = []
    ids: list[str] = []
    for i, node in enumerate(nodes):
        where = f"definition.nodes[{i}]"
        if not isinstance(node, Mapping):
            details.append({"field": where, "message": "must be an object"})
            continue
        nid = node.get("id")
        op = node.get("component") or node.get("operation")
        config = node.get("config")
        if config is None:               # ``"config": null`` next to Tauro's ``parameters``
            config = node.get("parameters")
        config = config or {}
        if not isinstance(nid, str) or not nid:
            details.append({"field": f"{where}.id", "message": "must be a non-empty string"})
            continue
        if not isinstance(op, str) or not op:
            details.append({"field": f"{where}.component",
                            "message": f"node {nid!r} names no component or operation"})
        elif not known(op):
            details.append({"field": f"{where}.component",
                            "message": f"unknown component or operation {op!r}"})
        if not isinstance(config, Mapping):
            details.append({"field": f"{where}.config", "message": "must be an object"})
            config = {}
        ids.append(nid)
        out_nodes.append({"id": nid, "component": op, "config": dict(config),
                          **({"type": node["type"]} if "type" in node else {})})
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        details.append({"field": "definition.nodes", "message": f"duplicate node ids: {dup}"})
    out_edges: list[dict[str, Any]] = []
    for i, edge in enumerate(edges):
        where = f"definition.edges[{i}]"
        if not isinstance(edge, Mapping):
            details.append({"field": where, "message": "must be an object"})
            continue
        src, dst = edge.get("source", edge.get("from")), edge.get("target", edge.get("to"))
        for name, end in (("source", src), ("target", dst)):
            if not isinstance(end, str) or end not in ids:
                details.append({"field": f"{where}.{name}",
                                "message": f"{end!r} is not a node of this definition"})
        for handle in ("sourceHandle", "targetHandle"):
            if edge.get(handle) is not None and not isinstance(edge.get(handle), str):
                details.append({"field": f"{where}.{handle}", "message": "must be a string"})
        out_edges.append({"source": src, "target": dst,
                          "sourceHandle": edge.get("sourceHandle"),
                          "targetHandle": edge.get("targetHandle")})
    if details:
        raise DefinitionError("invalid pipeline definition: " + "; ".join(
            f"{d['field']}: {d['message']}" for d in details[:5]), details)
    selectors: dict[str, tuple[str, str]] = {}
    for i, e in enumerate(out_edges):      # to_dag adds a node "<source>.<handle>" for it
        if e["sourceHandle"] in GENERIC_HANDLES:
            continue
        sel = f"{e['source']}.{e['sourceHandle']}"
        other = selectors.setdefault(sel, (e["source"], e["sourceHandle"]))
        clash = f"as output {other[1]!r} of {other[0]!r} does" \
            if other != (e["source"], e["sourceHandle"]) \
            else "which a node already has" if sel in ids else None   # "a"+"b.c", "a.b"+"c"
        if clash:
            raise DefinitionError(
                f"edge {i} selects output {e['sourceHandle']!r} of {e['source']!r}, which needs "
                f"the node id '{sel}', {clash}",
                [{"field": f"definition.edges[{i}].sourceHandle",
                  "message": f"needs the node id {sel}, {clash}"}])
    for node in out_nodes:
        incoming = [e for e in out_edges if e["target"] == node["id"]]
        named = [e["targetHandle"] not in GENERIC_HANDLES for e in incoming]
        if any(named) and not all(named):
            raise DefinitionError(f"node {node['id']!r} mixes named and positional inputs",
                                  [{"field": "definition.edges", "message":
                                    f"inputs of {node['id']!r}: give every edge a targetHandle or none"}])
        handles = [e["targetHandle"] for e in incoming] if all(named) else []
        twice = sorted({h for h in handles if handles.count(h) > 1})
        if twice:      # compiled to one keyword argument each: all but one would be dropped
            raise DefinitionError(
                f"node {node['id']!r} takes more than one edge into input {twice[0]!r}",
                [{"field": "definition.edges", "message":
                  f"inputs of {node['id']!r}: one edge per targetHandle ({', '.join(twice)})"}])
    deps = {n["id"]: [e["source"] for e in out_edges if e["target"] == n["id"]] for n in out_nodes}
    try:
        validate_dag(deps, None, None)
    except GraphValidationError as exc:
        raise DefinitionError(str(exc), [{"field": "definition.edges", "message": str(exc)}]) from exc
    result: dict[str, Any] = {"nodes": out_nodes, "edges": out_edges}
    if "metadata" in definition:
        result["metadata"] = definition["metadata"]
    return result


def check_calls(graph: Mapping[str, Any], executor: NodeExecutor) -> None:
    """Raise ``DefinitionError`` for a node of a normalized graph whose function component
    cannot be called with its inputs and config (an unknown keyword, a required argument that
    nothing gives, an input given twice): every run of it would fail at that node. Operations
    (``(deps, params)``) and class components take any config and are not checked."""
    for i, node in enumerate(graph["nodes"]):
        found = executor.resolve(node["component"])
        if found is None or found[1] != "component" or isinstance(found[0], type):
            continue
        fn = getattr(found[0], "fn", None)
        if fn is None:
            if hasattr(found[0], "execute"):
                continue
            fn = found[0]
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        incoming = [e for e in graph["edges"] if e["target"] == node["id"]]
        named = [e["targetHandle"] for e in incoming if e["targetHandle"] not in GENERIC_HANDLES]
        positional = len(incoming) - len(named)
        clash = sorted(set(named) & set(node["config"]))
        try:
            if clash:
                raise TypeError(f"{clash[0]!r} is given both by an edge and by config")
            sig.bind(*([None] * positional), **dict.fromkeys(named), **node["config"])
        except TypeError as exc:
            raise DefinitionError(
                f"node {node['id']!r} cannot call {node['component']!r}: {exc}",
                [{"field": f"definition.nodes[{i}].config",
                  "message": f"{node['component']!r} cannot be called with these inputs and "
                             f"config: {exc}"}]) from exc


def substitute_params(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        m = _PARAM_REF.match(value) if isinstance(value, str) else None
        if m:
            if m.group(1) not in params:
                raise ValidationError(f"config {key!r} needs run param {m.group(1)!r}")
            value = params[m.group(1)]
        out[key] = value
    return out


def to_dag(dag_id: str, graph: Mapping[str, Any], params: Mapping[str, Any],
           executor: NodeExecutor) -> DAGDefinition:
    """Compile a normalized graph into the dynamic scheduler's ``DAGDefinition``.

    A ``sourceHandle`` selection becomes a tiny operation node of its own (``node.handle``), so
    memoization and lineage see it like any other step.
    """
    nodes: list[NodeDefinition] = []
    extra: list[NodeDefinition] = []
    for node in graph["nodes"]:
        incoming = [e for e in graph["edges"] if e["target"] == node["id"]]
        sources: list[str] = []
        for e in incoming:
            src = e["source"]
            if e["sourceHandle"] not in GENERIC_HANDLES:
                sel_id = f"{src}.{e['sourceHandle']}"
                if not any(n.node_id == sel_id for n in extra):
                    op_name = f"__select__.{e['sourceHandle']}"
                    if executor.resolve(op_name) is None:
                        selector = SelectOutput(e["sourceHandle"])
                        executor.register_operation(op_name, lambda deps, _p, s=selector: s(
                            next(iter(deps.values()))))
                    extra.append(NodeDefinition(sel_id, op_name, [src], {}))
                src = sel_id
            sources.append(src)
        named = incoming and incoming[0]["targetHandle"] not in GENERIC_HANDLES
        arguments: list[str] | dict[str, str] = (
            {e["targetHandle"]: s for e, s in zip(incoming, sources)} if named else sources)
        nodes.append(NodeDefinition(node["id"], node["component"], arguments,
                                    substitute_params(node["config"], params)))
    return DAGDefinition(dag_id, [*extra, *nodes], metadata=dict(params))


def check_python_params(fn: Callable[..., Any], params: Mapping[str, Any],
                        text_names: Collection[str] | None = None) -> None:
    """Raise ``DefinitionError`` when ``params`` cannot be bound to the pipeline function, or a
    value is not of its parameter's annotated type (``str``, ``int``, ``float``, ``bool``):
    ``{"n_chunks": "abc"}`` would otherwise make a run that fails inside its body. A value
    of a text kind (a ``Path``, a ``date``: ``dsl.params``) must be its text; only those in
    ``text_names`` when given (a run's recorded defaults are the function's, not text)."""
    try:
        inspect.signature(fn).bind(**params)
    except TypeError as exc:
        raise DefinitionError(f"params do not fit the pipeline: {exc}",
                              [{"field": "params", "message": str(exc)}]) from exc
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    try:
        for name, kind in param_text_types(fn).items():
            if name in params and (text_names is None or name in text_names) and not (
                    params[name] is None and defaults.get(name) is None):
                build_param(name, kind, params[name])
    except ParamError as exc:       # a Path, a date... whose text is not one
        raise DefinitionError(f"params do not fit the pipeline: {exc}",
                              [{"field": f"params.{exc.param}", "message": str(exc)}]) from None
    types = param_json_types(fn)
    if not types:
        return
    wrong = [(name, types[name], value) for name, value in params.items()
             if name in types and not json_fits(value, types[name])
             and not (value is None and defaults.get(name) is None)]
    if wrong:
        raise DefinitionError("params do not fit the pipeline: " + "; ".join(
            f"{name} expects {t.__name__}, got {type(v).__name__}" for name, t, v in wrong),
            [{"field": f"params.{name}", "message": f"expected {t.__name__}, got {type(v).__name__}"}
             for name, t, v in wrong])
