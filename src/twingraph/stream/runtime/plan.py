"""From job graph to physical plan: resolve virtual nodes, pick edge kinds, chain operators.

Edge kinds between a producer P and a consumer C:

- ``hash``: C is keyed; every record goes to the subtask owning its key group.
- ``chain``: C has P's main output as its only input, P's main output has no other consumer, and
  both have the same parallelism: C runs inside P's task, called directly with P's output batches.
- ``forward``: same parallelism, not chainable: subtask i feeds subtask i through a channel.
- ``rebalance``: different parallelism: batches go round-robin to the consumer's subtasks.

Node ids are creation order, and a node's inputs are always created before it, so id order is a
topological order; tasks run in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twingraph.errors import ConfigurationError
from twingraph.stream.functions import OutputTag
from twingraph.stream.graph import JobGraph, Transformation


@dataclass
class Edge:
    producer: int
    tag: OutputTag | None
    consumer: int
    kind: str  # chain | forward | rebalance | hash


@dataclass
class Plan:
    job: JobGraph
    nodes: dict[int, Transformation]
    parallelism: dict[int, int]
    inputs: dict[int, list[Edge]] = field(default_factory=dict)
    outputs: dict[int, list[Edge]] = field(default_factory=dict)
    chains: list[list[int]] = field(default_factory=list)


def _resolve(job: JobGraph, tid: int, tag: OutputTag | None = None) -> list[tuple[int, OutputTag | None]]:
    t = job.transformations[tid]
    if t.kind == "union":
        return [r for i in t.inputs for r in _resolve(job, i, tag)]
    if t.kind == "side":
        return _resolve(job, t.inputs[0], t.tag)
    return [(tid, tag)]


def build_plan(job: JobGraph) -> Plan:
    real = {t.id: t for t in job.transformations if t.kind in ("source", "operator", "sink")}
    par: dict[int, int] = {}
    for t in real.values():
        p = t.parallelism or job.parallelism
        if t.kind == "source" and t.max_source_parallelism is not None:
            if t.parallelism and t.parallelism > t.max_source_parallelism:
                raise ConfigurationError(f"source {t.name} runs with at most {t.max_source_parallelism} subtasks")
            p = min(p, t.max_source_parallelism)
        if p > job.max_parallelism:
            raise ConfigurationError(f"parallelism {p} of {t.name} exceeds max parallelism {job.max_parallelism}")
        par[t.id] = p
    plan = Plan(job, real, par, {i: [] for i in real}, {i: [] for i in real})
    resolved = {t.id: [r for i in t.inputs for r in _resolve(job, i)] for t in real.values()}
    main_consumers: dict[int, int] = {}
    for ins in resolved.values():
        for pid, tag in ins:
            if tag is None:
                main_consumers[pid] = main_consumers.get(pid, 0) + 1
    for cid, ins in resolved.items():
        c = real[cid]
        for pid, tag in ins:
            if real[pid].kind == "sink":
                raise ConfigurationError("a sink has no output stream")
            if c.key_selector is not None:
                kind = "hash"
            elif par[pid] != par[cid]:
                kind = "rebalance"
            elif tag is None and len(ins) == 1 and main_consumers[pid] == 1:
                kind = "chain"
            else:
                kind = "forward"
            e = Edge(pid, tag, cid, kind)
            plan.inputs[cid].append(e)
            plan.outputs[pid].append(e)
    chained_into = {e.consumer for es in plan.inputs.values() for e in es if e.kind == "chain"}
    for tid in sorted(real):
        if tid in chained_into:
            continue
        chain = [tid]
        while True:
            nxt = [e.consumer for e in plan.outputs[chain[-1]] if e.kind == "chain"]
            if not nxt:
                break
            chain.append(nxt[0])
        plan.chains.append(chain)
    plan.chains.sort(key=lambda ch: ch[0])
    return plan
