"""The documented ``Workflow`` builder: a declarative pipeline assembled in code.

    wf = Workflow(name="My Pipeline")
    wf.add_component("load", load_data)          # a @component, a BaseComponent, or a name
    wf.add_component("process", "process_data", config={"threshold": 0.75})
    wf.connect("load", "process")
    client.workflows.create(wf)                  # sends wf.to_definition()

A node names a component by its *registered* name (what the server resolves), so the builder
needs no engine and no server: it only reads ``.name`` / ``.spec.name`` off a component object.
``to_definition()`` returns the TwinGraph wire shape ``{nodes, edges, metadata}`` with nodes
``{id, type: 'component', component, config}`` and edges ``{source, target, sourceHandle,
targetHandle}``. Mistakes a builder can see (duplicate ids, unknown endpoints, cycles, two edges
into one ``target_handle``) raise ``ValidationError`` at once; whether a component exists is for the server to say.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from twingraph.errors import ValidationError

#: Handles that name no argument (as the server reads them: ``service.definitions``).
_GENERIC_HANDLES = frozenset({None, "", "input", "output", "in", "out"})


def component_name(component: Any) -> str:
    """The registered name of ``component``: a string as given, else ``.name`` (a ``@component``
    or a named ``BaseComponent``), else ``.spec.name``, else a class's or function's ``__name__``."""
    if isinstance(component, str):
        if not component:
            raise ValidationError("component name must be a non-empty string")
        return component
    name = getattr(component, "name", None)
    if isinstance(name, str) and name:
        return name
    spec = getattr(component, "spec", None)
    spec_name = getattr(spec, "name", None)
    if isinstance(spec_name, str) and spec_name:
        return spec_name
    dunder = getattr(component, "__name__", None)
    if isinstance(dunder, str) and dunder and callable(component):
        return dunder
    raise ValidationError(f"cannot tell the component name of {component!r}: pass a @component, "
                          "a BaseComponent or the registered name")


class Workflow:
    """A pipeline definition built node by node (what ``POST /api/workflows/{id}`` takes)."""

    def __init__(self, name: str, *, description: str | None = None,
                 tags: Sequence[str] = (), metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValidationError("a workflow needs a non-empty name")
        self.name = name
        self.metadata: dict[str, Any] = dict(metadata or {})
        if description is not None:
            self.metadata["description"] = description
        if tags:
            self.metadata["tags"] = list(tags)
        self._nodes: dict[str, dict[str, Any]] = {}
        self._edges: list[dict[str, Any]] = []

    # -- building ---------------------------------------------------------------------------
    def add_component(self, node_id: str, component: Any,
                      config: Mapping[str, Any] | None = None) -> Workflow:
        """Add node ``node_id`` running ``component``; ``config`` becomes its keyword arguments
        (a value ``"${params.NAME}"`` is filled from the run's inputs). Returns ``self``."""
        if not isinstance(node_id, str) or not node_id:
            raise ValidationError("node_id must be a non-empty string")
        if node_id in self._nodes:
            raise ValidationError(f"workflow {self.name!r} already has a node {node_id!r}")
        if config is not None and not isinstance(config, Mapping):
            raise ValidationError(f"config of node {node_id!r} must be a mapping")
        self._nodes[node_id] = {"id": node_id, "type": "component",
                                "component": component_name(component),
                                "config": dict(config or {})}
        return self

    def connect(self, source: str, target: str, source_handle: str | None = None,
                target_handle: str | None = None) -> Workflow:
        """Feed ``source``'s result into ``target``. ``target_handle`` names the keyword
        argument it fills (none: positional, in connection order); ``source_handle`` picks one
        key of the source's outputs. Returns ``self``."""
        for end in (source, target):
            if end not in self._nodes:
                raise ValidationError(f"workflow {self.name!r} has no node {end!r}; add it first")
        if source == target or self._reaches(target, source):
            raise ValidationError(f"connecting {source!r} -> {target!r} would make a cycle")
        if target_handle not in _GENERIC_HANDLES:
            for e in self._edges:        # one keyword argument: a second edge would replace it
                if e["target"] == target and e["targetHandle"] == target_handle:
                    raise ValidationError(f"node {target!r} already has an input "
                                          f"{target_handle!r} (from {e['source']!r})")
        self._edges.append({"source": source, "target": target, "sourceHandle": source_handle,
                            "targetHandle": target_handle})
        return self

    def _reaches(self, start: str, goal: str) -> bool:
        seen, stack = {start}, [start]
        while stack:
            node = stack.pop()
            for e in self._edges:
                if e["source"] == node and e["target"] not in seen:
                    if e["target"] == goal:
                        return True
                    seen.add(e["target"])
                    stack.append(e["target"])
        return False

    # -- reading ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(n) for n in self._nodes.values()]

    @property
    def edges(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self._edges]

    def to_definition(self) -> dict[str, Any]:
        """``{nodes, edges, metadata}`` as the TwinGraph face stores it."""
        if not self._nodes:
            raise ValidationError(f"workflow {self.name!r} has no nodes")
        return {"nodes": self.nodes, "edges": self.edges, "metadata": copy.deepcopy(self.metadata)}

    def to_request(self) -> dict[str, Any]:
        """The body of ``POST/PUT /api/workflows/{id}``: ``{name, definition, metadata}``."""
        return {"name": self.name, "definition": self.to_definition(),
                "metadata": copy.deepcopy(self.metadata)}

    @classmethod
    def from_definition(cls, name: str, definition: Mapping[str, Any]) -> Workflow:
        """Rebuild a builder from a stored ``{nodes, edges, metadata}`` (either face's edge
        spelling), e.g. to change a workflow fetched with ``client.workflows.get``."""
        wf = cls(name, metadata=definition.get("metadata") or {})
        for node in definition.get("nodes") or []:
            wf.add_component(node["id"], node.get("component") or node.get("operation") or "",
                             node.get("config") or node.get("parameters") or {})
        for edge in definition.get("edges") or []:
            wf.connect(edge.get("source", edge.get("from")), edge.get("target", edge.get("to")),
                       edge.get("sourceHandle"), edge.get("targetHandle"))
        return wf

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r}, nodes={len(self._nodes)}, edges={len(self._edges)})"
