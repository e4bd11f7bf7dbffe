"""Static DAG checks: dangling references, unknown operations, cycles — each naming its nodes.

Used before anything runs, for declarative definitions (dynamic-scheduler DAGs, JSON/YAML files,
REST). Cycle detection is Tarjan's strongly connected components, iterative (a 1,000,000-node
chain must not hit the recursion limit), so the error names exactly the nodes on cycles.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence

from twingraph.errors import GraphValidationError


def validate_dag(deps: Mapping[str, Sequence[str]], operations: Mapping[str, str] | None = None,
                 known_operations: Container[str] | None = None) -> list[str]:
    """Check a DAG given as ``node -> [dependencies]``; return a topological order.

    Raises ``GraphValidationError`` naming the offending nodes for dangling references, unknown
    operations (when ``operations``/``known_operations`` are given) and cycles.
    """
    # Written in dependency order (the usual case): every reference is to a node seen
    # before, so none dangles, and the order is topological. One pass answers all three.
    written = _in_written_order(deps)
    dangling: dict[str, str] = {}
    if not written:
        missing: dict[str, set[str]] = {}
        for n, ds in deps.items():
            for d in ds:
                if d not in deps:
                    missing.setdefault(n, set()).add(d)
        dangling = {n: "needs " + ", ".join(sorted(ms)) for n, ms in missing.items()}
    unknown: dict[str, str] = {}
    if operations is not None and known_operations is not None:
        unknown = {n: f"operation {op!r}" for n, op in operations.items()
                   if op not in known_operations}
    if dangling or unknown:
        # both named at once (a file with both named only the dangling nodes)
        reason = " and ".join(r for r, found in (("dangling references", dangling),
                                                 ("unknown operations", unknown)) if found)
        why = {n: "; ".join(w for w in (dangling.get(n), unknown.get(n)) if w)
               for n in {**dangling, **unknown}}
        raise GraphValidationError(reason, why, why=why)
    order = list(deps) if written else _kahn(deps)
    if len(order) != len(deps):
        raise GraphValidationError("cycle", cycle_nodes(deps))
    return order


def _in_written_order(deps: Mapping[str, Sequence[str]]) -> bool:
    """Whether every node comes after all of its dependencies."""
    seen: set[str] = set()
    add = seen.add
    for n, ds in deps.items():
        for d in ds:
            if d not in seen:
                return False
        add(n)
    return True


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """The given order when it already is one (every node after its dependencies: the usual
    way graphs are written, checked in one pass); otherwise Kahn's algorithm. Nodes on or
    downstream of a cycle are left out."""
    return list(deps) if _in_written_order(deps) else _kahn(deps)


def _kahn(deps: Mapping[str, Sequence[str]]) -> list[str]:
    indeg = {n: 0 for n in deps}
    children: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in set(ds):
            indeg[n] += 1
            children[d].append(n)
    ready = [n for n, k in indeg.items() if k == 0]
    order: list[str] = []
    while ready:
        n = ready.pop()
        order.append(n)
        for c in children[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    return order


def cycle_nodes(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Nodes that lie on a cycle (members of a non-trivial SCC, or with a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[str] = []
    counter = 0
    for root in deps:
        if root in index:
            continue
        work = [(root, iter(deps[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(deps[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                scc = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    scc.append(w)
                    if w == node:
                        break
                if len(scc) > 1 or node in deps[node]:
                    out.extend(scc)
    return sorted(out)
