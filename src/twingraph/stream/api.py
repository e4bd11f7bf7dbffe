"""The user-facing DataStream API (the stream-engine document's names, plus what a Flink user expects).

``StreamExecutionEnvironment`` collects :class:`~twingraph.stream.graph.Transformation` nodes as
``DataStream``/``KeyedStream``/``WindowedStream`` methods are called; ``execute()`` freezes them
into a :class:`~twingraph.stream.graph.JobGraph` and runs it on the embedded runtime.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from twingraph.errors import ConfigurationError, StreamError
from twingraph.stream.clock import Clock, SystemClock
from twingraph.stream.connectors.collection import CollectionSource
from twingraph.stream.functions import AggregateFunction, KeyedProcessFunction, OutputTag, ProcessFunction
from twingraph.stream.graph import CheckpointConfig, JobGraph, Transformation
from twingraph.stream.operators import (FilterOperator, FlatMapOperator, KeyedProcessOperator,
                                        KeyedReduceOperator, MapOperator, ProcessOperator)
from twingraph.stream.window_operator import WindowOperator
from twingraph.stream.watermarks import WatermarkStrategy
from twingraph.stream.windows import WindowAssigner


class StreamExecutionEnvironment:
    """Entry point: build a job, then ``execute()`` it."""

    def __init__(self, name: str = "job", *, clock: Clock | None = None) -> None:
        self.name = name
        self.clock: Clock = clock or SystemClock()
        self._nodes: list[Transformation] = []
        self._parallelism = 1
        self._max_parallelism = 128
        self._checkpoint = CheckpointConfig()
        self._backend = "memory"
        self._state_dir: str | None = None
        self._batch_size = 1000

    # -- configuration -------------------------------------------------------------------
    def set_parallelism(self, parallelism: int) -> StreamExecutionEnvironment:
        if parallelism < 1:
            raise ConfigurationError("parallelism must be >= 1")
        self._parallelism = parallelism
        return self

    def set_max_parallelism(self, max_parallelism: int) -> StreamExecutionEnvironment:
        """The number of key groups; fixed for the life of the job (checkpoints record it)."""
        if not 1 <= max_parallelism <= 32768:
            raise ConfigurationError("max_parallelism must be in 1..32768")
        self._max_parallelism = max_parallelism
        return self

    def enable_checkpointing(self, interval_ms: int, directory: str | os.PathLike[str] | None = None,
                             retained: int = 3, fsync: bool = True) -> StreamExecutionEnvironment:
        """Checkpoint every ``interval_ms`` into ``directory`` (default: $TWINGRAPH_STREAM_CHECKPOINTS
        or ./checkpoints/<job name>), keeping the last ``retained``. ``fsync=False`` skips the
        fsyncs: checkpoints then survive a killed process but not a power loss."""
        if interval_ms <= 0:
            raise ConfigurationError("checkpoint interval_ms must be > 0")
        d = directory or os.environ.get("TWINGRAPH_STREAM_CHECKPOINTS") or os.path.join("checkpoints", self.name)
        self._checkpoint = CheckpointConfig(interval_ms, os.fspath(d), retained, fsync)
        return self

    def set_checkpoint_storage(self, directory: str | os.PathLike[str], retained: int = 3) -> StreamExecutionEnvironment:
        """Where checkpoints and savepoints go, without periodic checkpoints (savepoints only)."""
        self._checkpoint = CheckpointConfig(self._checkpoint.interval_ms, os.fspath(directory), retained)
        return self

    def set_state_backend(self, backend: str, directory: str | os.PathLike[str] | None = None) -> StreamExecutionEnvironment:
        """``"memory"`` (default) or ``"sqlite"`` (durable, larger than memory; files under ``directory``)."""
        if backend not in ("memory", "sqlite"):
            raise ConfigurationError(f"unknown state backend {backend!r}: use 'memory' or 'sqlite'")
        self._backend, self._state_dir = backend, os.fspath(directory) if directory else None
        return self

    def set_batch_size(self, n: int) -> StreamExecutionEnvironment:
        """Records a source polls at a time (larger: more throughput, coarser interleaving)."""
        self._batch_size = max(1, n)
        return self

    # -- sources -------------------------------------------------------------------------
    def add_source(self, source_operator: Any, watermark_strategy: WatermarkStrategy | None = None,
                   timestamp_assigner: Callable[[Any], int] | None = None, name: str | None = None,
                   parallelism: int | None = None) -> DataStream:
        """Add a source (a ``Source`` object, or a zero-argument factory returning one).

        The watermark strategy is the argument, else the source's own ``watermark_strategy``
        attribute (as ``KafkaSourceOperator`` has), else none.
        """
        ws = watermark_strategy or getattr(source_operator, "watermark_strategy", None)
        return self._add(Transformation(
            id=len(self._nodes), kind="source", name=name or type(source_operator).__name__,
            source=source_operator, watermark_strategy=ws, timestamp_assigner=timestamp_assigner,
            parallelism=parallelism, max_source_parallelism=getattr(source_operator, "max_parallelism", None)))

    def from_source(self, source: Any, watermark_strategy: WatermarkStrategy | None = None,
                    name: str | None = None) -> DataStream:
        return self.add_source(source, watermark_strategy, name=name)

    def from_collection(self, items: Iterable[Any], timestamp_assigner: Callable[[Any], int] | None = None,
                        watermark_strategy: WatermarkStrategy | None = None) -> DataStream:
        """A bounded, replayable, non-parallel source over ``items`` (as in Flink).

        ``timestamp_assigner(item) -> event time in ms``; with one and no strategy the watermark
        follows the timestamps exactly (monotonous: an older element after a newer one is late).
        """
        if timestamp_assigner is not None and watermark_strategy is None:
            watermark_strategy = WatermarkStrategy(0)
        return self.add_source(CollectionSource(list(items)), watermark_strategy, timestamp_assigner,
                               name="Collection")

    def read_text_file(self, path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                       timestamp_assigner: Callable[[Any], int] | None = None,
                       watermark_strategy: WatermarkStrategy | None = None) -> DataStream:
        """Lines of one file, a list of files, or every file of a directory (one split per file)."""
        from twingraph.stream.connectors.files import FileSource

        if timestamp_assigner is not None and watermark_strategy is None:
            watermark_strategy = WatermarkStrategy(0)
        return self.add_source(FileSource(path), watermark_strategy, timestamp_assigner, name="FileSource")

    # -- building ------------------------------------------------------------------------
    def _add(self, t: Transformation) -> DataStream:
        self._nodes.append(t)
        return DataStream(self, t.id)

    def _op(self, inputs: tuple[int, ...], name: str, factory: Callable[[str], Any],
            key_selector: Callable[[Any], Any] | None = None) -> DataStream:
        return self._add(Transformation(id=len(self._nodes), kind="operator", name=name, inputs=inputs,
                                        operator=factory, key_selector=key_selector))

    def _update(self, tid: int, **changes: Any) -> None:
        self._nodes[tid] = replace(self._nodes[tid], **changes)

    def get_job_graph(self) -> JobGraph:
        return JobGraph(name=self.name, transformations=tuple(self._nodes), parallelism=self._parallelism,
                        max_parallelism=self._max_parallelism, checkpoint=self._checkpoint,
                        state_backend=self._backend, state_dir=self._state_dir, batch_size=self._batch_size)

    # -- running -------------------------------------------------------------------------
    def execute(self, restore_from: str | os.PathLike[str] | None = None) -> str:
        """Run the job embedded, blocking until a bounded job finishes; returns the job id.

        ``restore_from``: a checkpoint or savepoint directory, or ``"latest"`` for the newest
        completed checkpoint in the checkpoint directory (a fresh start if there is none).
        Raises ``JobFailed`` if an operator raised, ``CheckpointError`` if restoring failed.

        With ``TWINGRAPH_JOBMANAGER_URL`` set, the job is not run here: its serialized graph is
        submitted to that job manager (``POST /jobs/submit``, multipart ``job_file``, with
        ``TWINGRAPH_API_KEY`` as ``X-API-Key``: an ``admin`` key, since the graph is code) and
        the job id is returned at once. Functions of ``__main__`` travel by value; those of
        other modules must be importable by the server (or registered with
        ``cloudpickle.register_pickle_by_value``).
        """
        url = os.environ.get("TWINGRAPH_JOBMANAGER_URL")
        if url:
            if restore_from is not None:
                raise StreamError("restore_from is not sent to a job manager; submit a restore "
                                  "with `twingraph stream restore`")
            return self._submit(url.rstrip("/"), os.environ.get("TWINGRAPH_API_KEY"))
        return self.execute_async(restore_from, thread=False).wait()

    def _submit(self, url: str, api_key: str | None) -> str:
        import cloudpickle
        import httpx
        blob = cloudpickle.dumps(self.get_job_graph())
        try:
            r = httpx.post(f"{url}/jobs/submit", files={"job_file": ("job.graph", blob)},
                           headers={"X-API-Key": api_key} if api_key else {}, timeout=60)
        except httpx.HTTPError as exc:
            raise StreamError(f"cannot reach the job manager at {url}: {exc}") from exc
        if r.status_code != 200:
            try:
                detail = r.json().get("error", {}).get("message") or r.text
            except ValueError:
                detail = r.text
            raise StreamError(f"the job manager refused the job ({r.status_code}): {detail}")
        job_id: str = r.json()["job_id"]
        return job_id

    def execute_async(self, restore_from: str | os.PathLike[str] | None = None, *, thread: bool = True) -> Any:
        """Start the job and return its ``JobClient`` (status, metrics, savepoint, cancel, wait)."""
        from twingraph.stream.runtime.job import JobClient

        return JobClient.start(self.get_job_graph(), self.clock, restore_from=restore_from, thread=thread)


class DataStream:
    """A stream of elements; every method adds a node and returns the new stream."""

    def __init__(self, env: StreamExecutionEnvironment, tid: int) -> None:
        self.env, self.tid = env, tid

    # -- per-node settings ---------------------------------------------------------------
    def set_parallelism(self, parallelism: int) -> DataStream:
        self.env._update(self.tid, parallelism=parallelism)
        return self

    def uid(self, uid: str) -> DataStream:
        """A stable name for this node's state in checkpoints (survives edits to the job)."""
        self.env._update(self.tid, uid=uid)
        return self

    def name(self, name: str) -> DataStream:
        self.env._update(self.tid, name=name)
        return self

    # -- transformations -----------------------------------------------------------------
    def map(self, func: Callable[[Any], Any]) -> DataStream:
        return self.env._op((self.tid,), "Map", lambda uid: MapOperator(uid, func))

    def filter(self, func: Callable[[Any], bool]) -> DataStream:
        return self.env._op((self.tid,), "Filter", lambda uid: FilterOperator(uid, func))

    def flat_map(self, func: Callable[[Any], Iterable[Any]]) -> DataStream:
        return self.env._op((self.tid,), "FlatMap", lambda uid: FlatMapOperator(uid, func))

    def process(self, func: ProcessFunction) -> DataStream:
        return self.env._op((self.tid,), "Process", lambda uid: ProcessOperator(uid, _fresh(func)))

    def key_by(self, key_selector: Callable[[Any], Any]) -> KeyedStream:
        return KeyedStream(self, key_selector)

    def union(self, *streams: DataStream) -> DataStream:
        return self.env._add(Transformation(id=len(self.env._nodes), kind="union", name="Union",
                                            inputs=(self.tid, *(s.tid for s in streams))))

    def get_side_output(self, tag: OutputTag) -> DataStream:
        return self.env._add(Transformation(id=len(self.env._nodes), kind="side", name=f"Side[{tag.name}]",
                                            inputs=(self.tid,), tag=tag))

    def add_sink(self, sink: Any, name: str | None = None) -> DataStream:
        """Send the stream to a ``Sink`` (object or zero-argument factory)."""
        return self.env._add(Transformation(id=len(self.env._nodes), kind="sink", name=name or type(sink).__name__,
                                            inputs=(self.tid,), sink=sink))

    sink_to = add_sink


class KeyedStream:
    """A stream partitioned by key: every key's state lives in exactly one subtask."""

    def __init__(self, stream: DataStream, key_selector: Callable[[Any], Any]) -> None:
        self.stream, self.key_selector = stream, key_selector

    def window(self, window_assigner: WindowAssigner) -> WindowedStream:
        return WindowedStream(self, window_assigner)

    def reduce(self, reduce_func: Callable[[Any, Any], Any]) -> DataStream:
        """Rolling reduce: emits the updated per-key value for every element."""
        return self.stream.env._op((self.stream.tid,), "KeyedReduce",
                                   lambda uid: KeyedReduceOperator(uid, reduce_func), self.key_selector)

    def process(self, func: KeyedProcessFunction) -> DataStream:
        return self.stream.env._op((self.stream.tid,), "KeyedProcess",
                                   lambda uid: KeyedProcessOperator(uid, _fresh(func)), self.key_selector)


class WindowedStream:
    """A keyed stream cut into windows; ``reduce``/``aggregate``/``apply`` produce the result stream."""

    def __init__(self, keyed: KeyedStream, assigner: WindowAssigner) -> None:
        self.keyed, self.assigner = keyed, assigner
        self._lateness = 0
        self._late_tag: OutputTag | None = None

    def allowed_lateness(self, ms: int) -> WindowedStream:
        if ms < 0:
            raise ConfigurationError("allowed lateness must be >= 0")
        self._lateness = ms
        return self

    def side_output_late_data(self, tag: OutputTag) -> WindowedStream:
        self._late_tag = tag
        return self

    def _build(self, kind: str, fn: Any, window_function: Any = None) -> DataStream:
        a, lat, tag = self.assigner, self._lateness, self._late_tag
        s = self.keyed.stream
        return s.env._op((s.tid,), f"Window[{type(a).__name__}].{kind}",
                         lambda uid: WindowOperator(uid, a, kind, _fresh(fn), lat, tag, window_function),
                         self.keyed.key_selector)

    def reduce(self, reduce_func: Callable[[Any, Any], Any],
               window_function: Callable[[Any, tuple[int, int], Any], Iterable[Any] | None] | None = None) -> DataStream:
        """One value per key and window: ``reduce_func(a, b)`` folded over its elements.

        With ``window_function(key, (start, end), reduced)`` the window emits what that returns
        (as Flink's reduce with a ProcessWindowFunction), e.g. to attach the key and window."""
        return self._build("reduce", reduce_func, window_function)

    def aggregate(self, aggregate_function: AggregateFunction,
                  window_function: Callable[[Any, tuple[int, int], Any], Iterable[Any] | None] | None = None) -> DataStream:
        """Incremental aggregation with an accumulator (``AggregateFunction``); ``window_function``
        as for ``reduce``, receiving ``get_result(accumulator)``."""
        return self._build("aggregate", aggregate_function, window_function)

    def apply(self, window_function: Callable[[Any, tuple[int, int], list[Any]], Iterable[Any] | None]) -> DataStream:
        """``window_function(key, (start, end), elements)`` returns the window's outputs."""
        return self._build("apply", window_function)


def _fresh(fn: Any) -> Any:
    """One copy of a function object per subtask, so instance attributes (state handles) are not shared."""
    if isinstance(fn, (ProcessFunction, AggregateFunction)):
        return copy.copy(fn)
    return fn
