"""``StreamingComponent`` (architecture document, Data Flow §3) and generator results."""
import pytest

from twingraph import StreamingComponent, component, pipeline


class Doubler(StreamingComponent):
    def process_chunk(self, chunk):
        return chunk * 2


class Batches(StreamingComponent):
    """Not one output per input: pairs of chunks."""
    def execute_streaming(self, input_stream):
        batch = []
        for chunk in input_stream:
            batch.append(chunk)
            if len(batch) == 2:
                yield batch
                batch = []
        if batch:
            yield batch


@component
def numbers(n: int) -> list:
    return list(range(n))


@component
def squares(n: int):
    for i in range(n):                 # a generator: its items become the result list
        yield i * i


@pipeline(name="streaming_components")
def streaming_pipe():
    doubled = Doubler()(numbers(n=5)["outputs"]["result"])
    batched = Batches()(input_stream=doubled["outputs"]["result"])
    return {"batched": batched, "squares": squares(n=4)}


def test_streaming_components_outside_and_inside_a_pipeline(engine):
    out = Doubler()(iter([1, 2, 3]))                   # outside: lazy, chunk by chunk
    assert next(out) == 2 and list(out) == [4, 6]
    assert list(Batches()(x for x in "abcde")) == [["a", "b"], ["c", "d"], ["e"]]
    r = streaming_pipe.run(engine=engine)
    assert r.state.value == "SUCCESS", r.error
    assert r.value["batched"]["outputs"]["result"] == [[0, 2], [4, 6], [8]]
    assert r.value["squares"]["outputs"]["result"] == [0, 1, 4, 9]
    again = streaming_pipe.run(engine=engine)           # stored and memoized like any result
    statuses = {t.cache_status for t in engine.metadata.get_tasks(again.run_id)}
    assert statuses == {"hit"}


def test_a_streaming_component_must_say_how_to_process():
    class Nothing(StreamingComponent):
        pass
    with pytest.raises(TypeError, match="must override process_chunk or execute_streaming"):
        list(Nothing()([1]))


@component
def lazy_pairs(n: int):
    return zip(range(n), map(str, range(n)))       # lazy iterators, not generators


def test_lazy_iterators_are_collected_too(engine):
    import asyncio

    from twingraph.engine.dynamic import NodeDefinition, NodeExecutor, NodeStatus

    @pipeline(name="lazy")
    def lazy():
        return lazy_pairs(n=3)
    r = lazy.run(engine=engine)
    assert r.value["outputs"]["result"] == [[0, "0"], [1, "1"], [2, "2"]] or \
        r.value["outputs"]["result"] == [(0, "0"), (1, "1"), (2, "2")]
    ex = NodeExecutor()
    ex.register_operation("gen", lambda deps, params: (i * 2 for i in range(3)))
    res = asyncio.run(ex.execute_node(NodeDefinition("g", "gen", [], {})))
    assert res.status is NodeStatus.COMPLETED and res.result_data == [0, 2, 4]


def test_unexpected_inputs_are_an_error_not_lost():
    with pytest.raises(TypeError, match="unexpected keyword argument 'factor'"):
        Doubler()([1], factor=3)
