"""TwinGraph's embedded streaming engine (Flink-style); see docs/streaming.md.

::

    from twingraph.stream import StreamExecutionEnvironment, TumblingWindow, WatermarkStrategies, CollectSink

    env = StreamExecutionEnvironment("WordCount")
    sink = CollectSink()
    (env.from_collection(events, timestamp_assigner=lambda e: e["ts"])
        .map(lambda e: (e["word"], 1))
        .key_by(lambda x: x[0])
        .window(TumblingWindow(1000))
        .reduce(lambda a, b: (a[0], a[1] + b[1]))
        .add_sink(sink))
    env.execute()
    sink.results
"""

from twingraph.stream.api import DataStream, KeyedStream, StreamExecutionEnvironment, WindowedStream
from twingraph.stream.checkpoints import CheckpointStorage
from twingraph.stream.clock import ManualClock, SystemClock
from twingraph.stream.connectors.base import Sink, Source, SourceSplitContext
from twingraph.stream.connectors.collect import CollectSink
from twingraph.stream.connectors.collection import CollectionSource
from twingraph.stream.connectors.files import FileSink, FileSource, read_committed
from twingraph.stream.entrypoints import stream_job
from twingraph.stream.functions import AggregateFunction, KeyedProcessFunction, OutputTag, ProcessFunction
from twingraph.stream.runtime.job import JobClient
from twingraph.stream.runtime.states import JobStatus
from twingraph.stream.state import ListState, MapState, ValueState
from twingraph.stream.watermarks import WatermarkStrategies, WatermarkStrategy
from twingraph.stream.windows import SessionWindow, SlidingWindow, TumblingWindow

_CONNECTORS = {
    "KafkaSourceOperator": "twingraph.stream.connectors.kafka",
    "KafkaSinkOperator": "twingraph.stream.connectors.kafka",
    "RedisStreamSource": "twingraph.stream.connectors.redis_streams",
    "RedisStreamSink": "twingraph.stream.connectors.redis_streams",
}


def __getattr__(name: str) -> object:
    """The document's Kafka operators (and the Redis Streams connectors), imported on first use."""
    module = _CONNECTORS.get(name)
    if module is None:
        raise AttributeError(f"module 'twingraph.stream' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AggregateFunction", "CheckpointStorage", "KafkaSinkOperator", "KafkaSourceOperator",
    "RedisStreamSink", "RedisStreamSource", "CollectSink", "CollectionSource", "DataStream", "FileSink",
    "FileSource", "JobClient", "JobStatus", "KeyedProcessFunction", "KeyedStream", "ListState", "ManualClock",
    "MapState", "OutputTag", "ProcessFunction", "SessionWindow", "Sink", "SlidingWindow", "Source",
    "SourceSplitContext", "StreamExecutionEnvironment", "SystemClock", "TumblingWindow", "ValueState",
    "WatermarkStrategies", "WatermarkStrategy", "WindowedStream", "read_committed", "stream_job",
]
