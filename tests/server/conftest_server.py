"""Helpers shared by the server tests (imported by name, like tests/stream/conftest_brokers)."""

from __future__ import annotations

from typing import Any


def graph(*, delay: float | None = None) -> dict[str, Any]:
    """A small TwinGraph-face definition over tests/resources/ops.py: numbers -> squares -> total
    (``n`` comes from the execution's inputs)."""
    numbers: dict[str, Any] = {"id": "numbers", "type": "component", "component": "make_numbers",
                               "config": {"n": "${params.n}"}}
    nodes = [numbers,
             {"id": "squares", "type": "component", "component": "square_all", "config": {}},
             {"id": "total", "type": "component", "component": "add_all", "config": {"offset": 1}}]
    edges = [{"source": "numbers", "target": "squares", "sourceHandle": "output",
              "targetHandle": "input"},
             {"source": "squares", "target": "total", "sourceHandle": "output",
              "targetHandle": "input"}]
    if delay is not None:
        nodes.append({"id": "nap", "type": "component", "component": "sleepy",
                      "config": {"seconds": delay}})
        edges.append({"source": "nap", "target": "total"})
    return {"nodes": nodes, "edges": edges}
