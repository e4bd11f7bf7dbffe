"""Runtime structure: operator chaining and edge kinds, key-group hash stability."""

from __future__ import annotations

from twingraph.stream import CollectSink, StreamExecutionEnvironment
from twingraph.stream.keygroups import key_group
from twingraph.stream.runtime.plan import build_plan


def test_one_to_one_operators_chain_and_key_by_or_rescaling_breaks_the_chain() -> None:
    env = StreamExecutionEnvironment("chains").set_parallelism(2)
    s = env.from_collection(range(10)).map(lambda x: x).filter(lambda x: True)  # source p=1, map p=2
    keyed = s.key_by(lambda x: x % 3).reduce(lambda a, b: a + b)
    keyed.map(str).add_sink(CollectSink())
    plan = build_plan(env.get_job_graph())
    names = [[plan.nodes[t].name for t in chain] for chain in plan.chains]
    assert names == [["Collection"], ["Map", "Filter"], ["KeyedReduce", "Map", "CollectSink"]]
    edge_kinds = {(plan.nodes[e.producer].name, plan.nodes[e.consumer].name): e.kind
                  for es in plan.inputs.values() for e in es}
    assert edge_kinds[("Collection", "Map")] == "rebalance"
    assert edge_kinds[("Filter", "KeyedReduce")] == "hash"
    assert edge_kinds[("KeyedReduce", "Map")] == "chain"


def test_key_groups_are_pinned_across_releases() -> None:
    # Checkpoints hold state by key group: if these values change, old checkpoints restore keys
    # into the wrong subtasks. Change them only together with a way to migrate checkpoints.
    keys = ("a", "user-42", 7, ("a", 1), b"x", None, 2.5)
    assert [key_group(k, 128) for k in keys] == [55, 13, 42, 42, 105, 27, 15]
