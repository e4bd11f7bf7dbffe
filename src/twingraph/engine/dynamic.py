"""The dynamic-scheduler document's API, on the TwinGraph engine.

``DAGDefinition`` / ``NodeDefinition`` / ``ExecutionConfig`` / ``ExecutionProgress`` /
``NodeStatus`` / ``ExecutionResult`` keep the document's names and fields. ``DynamicScheduler``
validates a DAG before anything runs (dangling references, unknown operations, cycles — the error
names the nodes), then runs it as an engine run: memoized by structural key, at most
``max_concurrent_nodes`` at once, failed nodes retried per ``retry_failed_nodes``/``max_retries``,
and a failure skips only what depends on it.

Operations use the document's convention ``op(dependency_data, parameters)`` where
``dependency_data`` maps each argument node id to its value (sync or ``async def``). Components
(``@component``, ``BaseComponent``, ``register_component``) may be used as operations too: they
are called with the argument values (positionally for a list, by name for a dict) plus the
parameters as keyword arguments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from types import AsyncGeneratorType, BuiltinFunctionType, CoroutineType, FunctionType, ModuleType
from typing import TYPE_CHECKING, Any

from twingraph.core.codeversion import code_version
from twingraph.core.graph import validate_dag
from twingraph.core.hashing import canonical_json, sha256_hex
from twingraph.core.instancestate import instance_state
from twingraph.core.logtext import unstorable
from twingraph.core.retry import RetryPolicy
from twingraph.core.specs import DEFAULT_TIMEOUT, ComponentSpec
from twingraph.core.states import RunState
from twingraph.engine import gcpace
from twingraph.engine.async_store import check_content, has_sync_port
from twingraph.engine.snapshot import error_text
from twingraph.engine.task import UNLOADED
from twingraph.serialization import own_copy
from twingraph.engine.awaiting import run_awaitable
from twingraph.engine.engine import Engine, RunResult
from twingraph.engine.loop import RunOptions
from twingraph.errors import (ConfigurationError, ExecutorUnavailable, GraphValidationError,
                              NodeExecutionError, NotFoundError, RunStopped, SchedulingError,
                              ValidationError)
from twingraph.registry import registered_components

if TYPE_CHECKING:
    from twingraph.engine.streaming_node import StreamingNodeExecutor


class NodeStatus(Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_TASK_TO_NODE = {"PENDING": NodeStatus.PENDING, "QUEUED": NodeStatus.PENDING,
                 "RETRYING": NodeStatus.PENDING, "RUNNING": NodeStatus.RUNNING,
                 "SUCCESS": NodeStatus.COMPLETED, "FAILED": NodeStatus.FAILED,
                 # skipped (an input failed): failed, as progress counts it (decision 0083);
                 # its error names the input
                 "SKIPPED": NodeStatus.FAILED, "CANCELLED": NodeStatus.CANCELLED}


@dataclass
class NodeDefinition:
    node_id: str
    operation: str
    arguments: list[str] | dict[str, str]   # node ids of dependencies (list, or name -> id)
    parameters: dict[str, Any]
    metadata: dict[str, Any] | None = None


@dataclass
class ExecutionResult:
    node_id: str
    status: NodeStatus
    result_data: Any = None
    error_message: str | None = None
    execution_time_ms: int | None = None
    memory_usage_bytes: int | None = None


@dataclass
class DAGDefinition:
    dag_id: str
    nodes: list[NodeDefinition]
    dependencies: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None

    def deps_of(self, node: NodeDefinition) -> list[str]:
        """The node ids ``node`` depends on, each once (a new list)."""
        return list(self._deps_view(node))

    def _deps_view(self, node: NodeDefinition) -> Sequence[str]:
        """``deps_of`` without the copy: may be the node's own list (read it, never change it)."""
        args = node.arguments
        if type(args) is list and not (self.dependencies and node.node_id in self.dependencies):
            # the common case, one call per node of a large graph: a list, usually without repeats
            n = len(args)
            if n < 2 or (args[0] != args[1] if n == 2 else len(set(args)) == n):
                return args
            return list(dict.fromkeys(args))
        named = args.values() if isinstance(args, dict) else args
        return list(dict.fromkeys([*named, *self.dependencies.get(node.node_id, [])]))


@dataclass
class ExecutionConfig:
    """The document's execution settings. ``storage_backend``/``storage_path``,
    ``compression`` (zstd for values that shrink) and ``cache_size`` (SQLite page cache per
    connection) configure the result store where one is created from them (``twingraph dynamic
    execute``; ``stores.results.factory.options_from_config``). ``streaming_threshold`` is how
    much of a streaming node's output is held in memory before it spills to a temporary file,
    for ``DynamicScheduler.executor.execute_streaming_node`` (``engine.streaming_node``); DAG
    runs (``submit_dag``, ``run``) do not use it. The stores chunk values above their own
    threshold (1 MiB) whatever it is, and stream them on read."""
    max_concurrent_nodes: int = 4
    storage_backend: str = "sqlite"
    storage_path: str = "./voxlogica_storage"
    cache_size: str = "512MB"
    compression: bool = True
    streaming_threshold: int = 100 * 1024 * 1024
    retry_failed_nodes: bool = True
    max_retries: int = 3
    async_execution: bool = False
    no_cache: bool = False


@dataclass
class ExecutionProgress:
    dag_id: str
    total_nodes: int
    completed_nodes: int
    failed_nodes: int
    running_nodes: int
    pending_nodes: int
    progress_percentage: float
    estimated_completion: str | None = None
    #: Not in the document (an extension, last, with a default): nodes that will not run
    #: because the execution was cancelled (``failed_nodes`` counts those skipped after a
    #: failed input: they end for a failure).
    cancelled_nodes: int = 0


class ErrorRecoveryManager:
    """The document's retry rules for failed nodes: at most ``max_retries`` retries, never for
    a ``ValidationError``, the n-th retry (0-based) after ``min(60, backoff_factor ** n)``
    seconds. ``retry_counts`` is per node id; ``record_retry`` counts one.

    A ``DynamicScheduler`` given one (``error_recovery=``) runs its DAGs by these rules: the
    engine retries a failed node as ``retry_policy()`` says, which is the same schedule (the
    engine counts attempts per task itself; ``retry_counts`` serves standalone use, e.g. around
    ``NodeExecutor.execute_node``)."""

    def __init__(self, max_retries: int = 3, backoff_factor: float = 2.0) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValidationError("max_retries must be an integer >= 0")
        if not isinstance(backoff_factor, (int, float)) or backoff_factor < 1:
            raise ValidationError("backoff_factor must be a number >= 1")
        self.max_retries = max_retries
        self.backoff_factor = float(backoff_factor)
        self.retry_counts: dict[str, int] = {}

    async def should_retry(self, node_id: str, error: Exception) -> bool:
        if self.retry_counts.get(node_id, 0) >= self.max_retries:
            return False
        return not isinstance(error, ValidationError)

    async def get_retry_delay(self, node_id: str) -> float:
        return min(60.0, self.backoff_factor ** self.retry_counts.get(node_id, 0))

    def record_retry(self, node_id: str) -> int:
        """Count a retry of ``node_id``; returns how many it has had."""
        n = self.retry_counts[node_id] = self.retry_counts.get(node_id, 0) + 1
        return n

    def retry_policy(self) -> RetryPolicy | None:
        """The same rules as the engine's per-task policy (None: no retries)."""
        if self.max_retries == 0:
            return None
        return RetryPolicy(max_attempts=self.max_retries + 1, initial_delay=1.0,
                           multiplier=self.backoff_factor, max_delay=60.0, jitter=0.0,
                           never=("twingraph.errors.ValidationError",))


_operations: dict[str, Callable[..., Any]] = {}


def _check_operation(name: Any, func: Any) -> None:
    if not isinstance(name, str) or not name:   # 5 was kept, and no node could name it
        raise ValidationError(f"an operation's name is a non-empty string, not {name!r}")
    if not callable(func):
        raise ValidationError(f"operation {name!r} must be callable")


def register_operation(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Register an operation for every scheduler in this process (used by ``--load`` modules)."""
    _check_operation(name, func)
    _operations[name] = func
    return func


def registered_operations() -> dict[str, Callable[..., Any]]:
    """The operations registered for every scheduler in this process (a copy)."""
    return dict(_operations)


def operation(name: str | Callable[..., Any] | None = None) -> Any:
    """Decorator form of ``register_operation``: ``@operation("name")``, ``@operation()``
    or bare ``@operation`` (the last two register the function under its own name)."""
    if callable(name):                    # bare: it was given the function itself
        return register_operation(name.__name__, name)
    if name is not None and not isinstance(name, str):
        raise ValidationError(f"operation name must be a string, not {name!r}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return register_operation(name or fn.__name__, fn)
    return wrap


def _no_stop(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for ``asyncio.to_thread``: a ``StopIteration`` it raises (``next()`` of
    an empty iterator) cannot be set on a future, and the awaiting ``execute_node`` never
    returned; it is raised as a ``NodeExecutionError`` of that type instead."""
    try:
        return fn(*args)
    except StopIteration as exc:
        raise NodeExecutionError(f"StopIteration: {exc}" if str(exc) else "StopIteration",
                                 error_type="StopIteration") from exc


class NodeExecutor:
    """Holds the operation registry; ``execute_node`` runs one node outside any DAG run."""

    def __init__(self, storage: Any = None) -> None:
        self.storage = storage
        self.operation_registry: dict[str, Callable[..., Any]] = {}

    def register_operation(self, name: str, func: Callable[..., Any]) -> None:
        _check_operation(name, func)
        self.operation_registry[name] = func

    def resolve(self, name: str) -> tuple[Callable[..., Any], str] | None:
        """(callable, style) where style is 'operation' or 'component'; None if unknown."""
        if name in self.operation_registry:
            return self.operation_registry[name], "operation"
        if name in _operations:
            return _operations[name], "operation"
        comp = registered_components().get(name)
        if comp is not None:
            return comp, "component"
        return None

    def known(self) -> set[str]:
        return set(self.operation_registry) | set(_operations) | set(registered_components())

    async def execute_node(self, node_def: NodeDefinition) -> ExecutionResult:
        """Run one node and store its result, as the document's ``execute_node`` does.

        Dependencies' values come from ``node_def.metadata['inputs']`` or are read from the
        storage (by node id, decoded). The value is encoded (``serialization.encode``) and stored
        under ``node_def.node_id`` with ``StorageMetadata(node_id, data_type, content_hash, size,
        metadata=node_def.metadata + {'encoding': ...})`` ('inputs' is not stored: it holds values,
        not metadata), so a later ``execute_node`` naming this node as an argument reads it back.
        COMPLETED only once the store succeeded; an id the storage does not accept as a key, a
        value that cannot be encoded or a failed store make the result FAILED with the reason
        (stores write atomically: nothing half-written is left). Without a storage nothing is
        stored. ``result_data`` is the value itself, not its encoded bytes.
        """
        start = time.perf_counter()
        try:
            found = self.resolve(node_def.operation)
            if found is None:
                raise NodeExecutionError(f"Unknown operation: {node_def.operation}",
                                         node_id=node_def.node_id)
            fn, style = found
            if self.storage is not None:
                await self._check_key(node_def.node_id)
            deps = dict((node_def.metadata or {}).get("inputs", {}))
            args = node_def.arguments.values() if isinstance(node_def.arguments, dict) \
                else node_def.arguments
            for dep in args:
                if dep not in deps:
                    deps[dep] = await self._load(dep)
            if _is_async(fn, style):
                # awaited here, on the caller's loop, as the document awaits it: concurrent
                # calls run side by side and may share the loop's locks, queues and clients
                out = _invoke(fn, style, node_def.arguments, node_def.parameters, deps)
                if type(out) is AsyncGeneratorType:
                    out = [x async for x in out]
                elif inspect.isawaitable(out):
                    out = await out
                value, encoded = await asyncio.to_thread(_no_stop, self._finish, out,
                                                         self.storage is not None)
            else:
                value, encoded = await asyncio.to_thread(
                    _no_stop, self._run, fn, style, node_def, deps, self.storage is not None,
                    asyncio.get_running_loop())
            if encoded is not None:
                await self._store(node_def, encoded)
            return ExecutionResult(node_def.node_id, NodeStatus.COMPLETED, result_data=value,
                                   execution_time_ms=int((time.perf_counter() - start) * 1000))
        except Exception as exc:  # noqa: BLE001 - the document returns failures as data
            return ExecutionResult(node_def.node_id, NodeStatus.FAILED,
                                   error_message=error_text(exc),
                                   execution_time_ms=int((time.perf_counter() - start) * 1000))

    @classmethod
    def _run(cls, fn: Any, style: str, node_def: NodeDefinition, deps: Mapping[str, Any],
             encode: bool, loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
        """Call the node and encode its value (off the event loop: both may be heavy); an
        awaitable it returns is awaited on ``loop``, the caller's."""
        return cls._finish(_call_node(fn, style, node_def.arguments, node_def.parameters, deps,
                                      loop), encode)

    @staticmethod
    def _finish(value: Any, encode: bool) -> tuple[Any, Any]:
        from twingraph import serialization
        from twingraph.engine.engine import collect
        value = collect(value)
        return value, (serialization.encode(value) if encode else None)

    async def _check_key(self, node_id: str) -> None:
        """Ask the storage (whose rules they are) whether ``node_id`` is a valid result key,
        before the operation runs; every backend raises StorageError for an invalid key."""
        from twingraph.errors import StorageError
        try:
            await self.storage.exists(node_id)
        except StorageError as exc:
            raise StorageError(f"cannot store a result under node id {node_id!r}: {exc}") from exc

    async def _store(self, node_def: NodeDefinition, encoded: Any) -> None:
        from twingraph.errors import StorageError
        md = {k: v for k, v in (node_def.metadata or {}).items() if k != "inputs"}
        meta = encoded.to_metadata(node_def.node_id, md)
        try:
            data = encoded.buffers if has_sync_port(self.storage) else encoded.to_bytes()
            ok = await self.storage.store_result(node_def.node_id, data, meta)
        except StorageError as exc:
            raise StorageError(f"result of node {node_def.node_id!r} not stored: {exc}") from exc
        if ok is False:
            raise StorageError(f"result of node {node_def.node_id!r} not stored: "
                               "the storage refused it")

    async def _load(self, node_id: str) -> Any:
        from twingraph import serialization
        if self.storage is None:
            raise NodeExecutionError(f"Dependency {node_id} not found")
        meta = await self.storage.get_metadata(node_id)
        data = await self.storage.retrieve_result(node_id)
        if meta is None or data is None:
            raise NodeExecutionError(f"Dependency {node_id} not found")
        if not has_sync_port(self.storage):
            # A user's store (the document's eight methods) need not check what it returns:
            # checked here, as a DAG run checks it (``AsyncStoreAdapter``). TwinGraph's own
            # stores check every read themselves.
            check_content(node_id, meta.content_hash, data)
        return serialization.decode(data, (meta.metadata or {}).get("encoding", "bytes"))


#: Result types that are never awaitable (``inspect.isawaitable`` ends in an ABC check).
_PLAIN = frozenset({int, float, str, bool, type(None), bytes, list, dict, tuple})


def _call_node(fn: Any, style: str, arguments: Any, parameters: Mapping[str, Any],
               values: Mapping[str, Any], loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """Call a node's operation; an ``async def`` operation is awaited on ``loop`` (the loop
    the DAG was submitted from) or on the process's loop for them (``engine.awaiting``)."""
    out = _invoke(fn, style, arguments, parameters, values)
    if style == "operation" and type(out) not in _PLAIN:
        if type(out) is AsyncGeneratorType:     # on the same loop as a coroutine would be
            out = run_awaitable(_items(out), loop)
        elif inspect.isawaitable(out):
            out = run_awaitable(out, loop)
    return out


async def _items(agen: Any) -> list[Any]:
    return [x async for x in agen]


def _is_async(fn: Any, style: str) -> bool:
    """Whether calling the node gives a coroutine or an async generator to await."""
    if isinstance(fn, type):
        return False
    # Not unwrapped: a plain function that wraps a coroutine function (``functools.wraps``
    # over ``asyncio.run(...)``, asgiref's ``async_to_sync``) blocks, and runs on a thread.
    target = fn if style == "operation" else (getattr(fn, "fn", None) or fn)
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def _invoke(fn: Any, style: str, arguments: Any, parameters: Mapping[str, Any],
            values: Mapping[str, Any]) -> Any:
    """What calling the node's operation returns (a coroutine is not awaited here)."""
    if style == "operation":
        deps = {k: values[k] for k in (arguments.values() if type(arguments) is dict
                                       else arguments)}
        return fn(deps, dict(parameters))
    target = getattr(fn, "fn", None) or (fn.run if hasattr(fn, "execute") else fn)
    if isinstance(fn, type):
        target = fn(dict(parameters)).run
        parameters = {}
    if isinstance(arguments, dict):
        return target(**{k: values[v] for k, v in arguments.items()}, **parameters)
    return target(*[values[a] for a in arguments], **parameters)


def _check_calls(nodes: list[NodeDefinition], ops: Mapping[str, tuple[Any, str]]) -> None:
    """A node that gives a component operation arguments its function cannot take (a name
    it has not, one too many) fails the DAG before it runs, naming the nodes: it failed at
    run time, after three retries. Checked once per operation and shape of call (argument
    names or count, parameter names), so a million nodes of one shape cost one check."""
    if not any(style == "component" for fn, style in ops.values()):
        return
    shapes: dict[tuple[Any, ...], str | None] = {}
    bad: dict[str, list[str]] = {}
    for n in nodes:
        fn, style = ops[n.operation]
        if style != "component":
            continue
        a = n.arguments
        shape = (n.operation, tuple(a) if type(a) is dict else len(a), tuple(n.parameters))
        if shape not in shapes:
            shapes[shape] = _call_error(fn, a, n.parameters)
        why = shapes[shape]
        if why is not None:
            bad.setdefault(f"operation {n.operation!r} cannot be called as given: {why}",
                           []).append(n.node_id)
    if bad:             # every offending node, whatever is wrong with each
        raise GraphValidationError("; ".join(bad), [i for ids in bad.values() for i in ids])


def _call_error(fn: Any, arguments: Any, parameters: Mapping[str, Any]) -> str | None:
    """Why ``_invoke`` would fail to call component ``fn`` with these arguments' names and
    parameters (``TypeError``'s text), or None."""
    given: tuple[Any, ...] = ()
    if isinstance(fn, type):           # a registered class: parameters are its config
        target = getattr(fn, "execute", None)
        if target is None:
            return None
        given, parameters = (None,), {}            # ``self``
    else:                              # ``run`` takes anything and passes it to ``execute``
        target = getattr(fn, "fn", None) or getattr(fn, "execute", None) or fn
    try:
        # the wrapper's own signature, which is what is called (a decorator that supplies a
        # connection takes fewer arguments than the function it wraps)
        sig = inspect.signature(target, follow_wrapped=False)
    except (TypeError, ValueError):        # a builtin without one: not checked
        return None
    try:
        if isinstance(arguments, dict):
            sig.bind(*given, **dict.fromkeys(arguments), **parameters)
        else:
            sig.bind(*given, *[None] * len(arguments), **parameters)
    except TypeError as exc:
        return str(exc)
    return None


#: The most a running execution's progress says: 100 % is for one that has ended.
LIVE_MAX_PERCENT = 99.9

class _OpCall:
    """One per operation (and run): the task function of its nodes. Keeping ``fn`` out of
    the task's arguments keeps it out of the input digest (the spec's code version covers
    it). ``loop``: where an ``async def`` operation is awaited (``_call_node``); not sent to
    a worker process, which awaits on its own loop."""
    __slots__ = ("fn", "style", "loop", "__wrapped__")

    def __init__(self, fn: Any, style: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.fn, self.style, self.loop = fn, style, loop
        self.__wrapped__ = getattr(fn, "fn", fn)

    def __call__(self, arguments: Any, parameters: dict[str, Any], values: dict[str, Any]) -> Any:
        if self.style == "operation":     # ``collect`` awaits a component's coroutine
            return _call_node(self.fn, self.style, arguments, parameters, values, self.loop)
        out = _call_node(self.fn, self.style, arguments, parameters, values)
        if type(out) is CoroutineType:
            return run_awaitable(out, self.loop)
        if type(out) is AsyncGeneratorType:
            return run_awaitable(_items(out), self.loop)
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (_OpCall, (self.fn, self.style))


class Plan:
    """A validated DAG: its nodes in topological order and, per operation, the callable it
    resolved to at validation time (one entry per operation, not per node: a million-node
    graph keeps one reference per node). Iterating yields ``(node, fn, style)``."""
    __slots__ = ("nodes", "ops")

    def __init__(self, nodes: list[NodeDefinition], ops: dict[str, tuple[Any, str]]) -> None:
        self.nodes, self.ops = nodes, ops

    def __iter__(self) -> Iterator[tuple[NodeDefinition, Any, str]]:
        ops = self.ops
        for node in self.nodes:
            fn, style = ops[node.operation]
            yield node, fn, style

    def __len__(self) -> int:
        return len(self.nodes)


#: Nodes of a declarative graph submitted ahead of the ones finished. Nodes come in topological
#: order, so the oldest unfinished node never waits for one not yet submitted; the window keeps
#: a million-node graph from existing as a million waiting tasks (with their arguments) at once.
#: Kept small enough that a submitted node rarely waits longer than ``RunLoop.DEFER_WAITING``
#: (at 5,000-15,000 nodes/s): one that does gets an early PENDING row and later its final one,
#: two writes instead of one (at 50,000, a 200k-node DAG wrote 45 % more rows).
SUBMIT_WINDOW = 10_000


def _wait_for_window(run: Any) -> None:
    backlog = getattr(run, "backlog", None)
    if backlog is None:
        return
    while backlog() > SUBMIT_WINDOW and not run.done.is_set():
        time.sleep(0.002)


def _bound_to(op: Any) -> Any:
    """The instance whose state an operation computes with: a callable instance's own, or a
    bound method's object (not a module's, not a class's); None for a function, a class, a
    ``functools.partial`` (its arguments are in its code version) or a builtin."""
    if inspect.ismethod(op):
        owner = op.__self__
        return None if isinstance(owner, (type, ModuleType)) else owner
    if isinstance(op, (type, FunctionType, BuiltinFunctionType, functools.partial)) \
            or not hasattr(op, "__dict__"):
        return None
    return op


def _check_shapes(dag: DAGDefinition) -> None:
    """What the file form refuses (``dagfile``), refused for a DAG built in Python too, as a
    ``ValidationError`` naming the offending nodes before anything runs: an empty DAG, nodes
    that are not ``NodeDefinition``s (a dict failed with an ``AttributeError``), an id that is
    not a non-empty string (``1`` and ``"1"`` passed the duplicate check and shared one
    result), an operation that is not a string, arguments that are neither a list nor a
    mapping (a string was read as a list of characters) or that hold anything but node ids
    (``[1]``, ``[None]`` raised a ``TypeError`` from the graph check, ``[["a"]]`` an unhashable
    one), parameters that are not a mapping (``None`` or a list ran, then failed the node),
    node metadata that is neither None nor a mapping, ``dependencies`` that are not ids mapped
    to lists of ids. ``nodes`` may be any sequence of nodes (a list or a tuple), not a string.
    Cheap per node: it runs over a million-node DAG before it starts (a pass per field, one
    for operation, parameters and metadata together; the ids in argument lists cost nothing
    here, see below; offenders are looked for only once something is wrong)."""
    if not isinstance(dag.dag_id, str) or not dag.dag_id:
        raise ValidationError(f"dag_id must be a non-empty string, not {dag.dag_id!r}")
    if unstorable(dag.dag_id):
        raise ValidationError(f"dag_id {dag.dag_id!r} holds a NUL or text that is not valid "
                              f"UTF-8, which is recorded as it is (PostgreSQL refuses it)")
    nodes = dag.nodes
    if isinstance(nodes, (str, bytes, bytearray, Mapping)) or not isinstance(nodes, Sequence):
        raise ValidationError(f"DAG {dag.dag_id!r}: nodes must be a list of NodeDefinition, "
                              f"not {type(nodes).__name__}")
    if not nodes:
        raise ValidationError(f"DAG {dag.dag_id!r} has no nodes")
    if not all(issubclass(t, NodeDefinition) for t in set(map(type, nodes))):
        bad = [f"nodes[{i}] ({type(n).__name__})" for i, n in enumerate(nodes)
               if not isinstance(n, NodeDefinition)]
        raise GraphValidationError("nodes must be NodeDefinition instances", bad)
    ids = [n.node_id for n in nodes]
    if set(map(type, ids)) != {str} or "" in ids:
        raise GraphValidationError("node ids must be non-empty strings",
                                   [repr(i) for i in ids if type(i) is not str or not i])
    if unstorable("\n".join(ids)):       # one pass over a million ids (~20 ms)
        raise GraphValidationError(
            "node ids must not hold a NUL or text that is not valid UTF-8 (they are recorded "
            "as they are; PostgreSQL refuses a NUL)", [repr(i) for i in ids if unstorable(i)])
    arguments = [n.arguments for n in nodes]
    kinds = set(map(type, arguments))
    if not kinds <= {list, dict}:
        raise GraphValidationError(
            "arguments must be a list of node ids or a mapping of names to node ids",
            [n.node_id for n in nodes if type(n.arguments) not in (list, dict)])
    if dict in kinds:        # names are strings too (they become keyword arguments)
        _check_argument_ids([n for n in nodes if type(n.arguments) is dict])
    # The ids in a list are checked by the graph check (``_validated``) at no cost here: every
    # node id is a string, so an argument that is not one is never an id, and the graph check
    # fails on it (dangling, or unhashable); only then are the arguments looked at.
    fields = {(type(n.operation), type(n.parameters), type(n.metadata)) for n in nodes}
    if any(op is not str for op, _, _ in fields):
        raise GraphValidationError("operation must be the name of an operation (a string)",
                                   [n.node_id for n in nodes if type(n.operation) is not str])
    if not all(issubclass(params, dict) for _, params, _ in fields):
        odd = [n for n in nodes if not isinstance(n.parameters, dict)]
        raise GraphValidationError("parameters must be a mapping of names to values",
                                   [n.node_id for n in odd],
                                   why={n.node_id: _short(f"parameters {n.parameters!r}")
                                        for n in odd})
    if not all(md is type(None) or issubclass(md, dict) for _, _, md in fields):
        raise GraphValidationError(
            "node metadata must be a mapping (or None)",
            [n.node_id for n in nodes if not (n.metadata is None or isinstance(n.metadata, dict))])
    if any(md is not type(None) for _, _, md in fields):
        # stored with the node's result, as JSON: what JSON cannot hold fails before the run
        bad = [n.node_id for n in nodes if n.metadata and not _json_data(
            {k: v for k, v in n.metadata.items() if k != "inputs"})]
        if bad:
            raise GraphValidationError("node metadata must be JSON data (it is stored with the "
                                       "node's result)", bad)
    deps = dag.dependencies
    if not isinstance(deps, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
            for k, v in deps.items()):
        raise ValidationError("dependencies map node ids to lists of node ids")
    metadata = dag.metadata
    if metadata is not None:
        # The run's params: a value JSON cannot hold (a datetime) ran the DAG, then failed
        # the run when its record was written (as ``dagfile`` refuses it in a file).
        if not isinstance(metadata, dict):
            raise ValidationError("metadata must be a mapping (it becomes the run's params)")
        try:
            json.dumps(metadata, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"metadata must be JSON data (it becomes the run's params): "
                                  f"{exc}") from exc


def _check_argument_ids(nodes: Iterable[NodeDefinition]) -> None:
    """Refuse arguments of ``nodes`` that are not strings (node ids; for a mapping, its names
    too), naming the nodes: ``[1]`` and ``[None]`` raised a ``TypeError`` from the graph check,
    ``[["a"]]`` an unhashable one."""
    bad = {n.node_id: _short(f"arguments {n.arguments!r}") for n in nodes
           if not _ids_only(n.arguments)}
    if bad:
        raise GraphValidationError("arguments must name node ids (strings)", bad, why=bad)


def _ids_only(arguments: list[Any] | dict[Any, Any]) -> bool:
    """Whether ``arguments`` (a list, or a mapping) holds strings only: ids, and names."""
    if type(arguments) is dict:
        return all(type(k) is str and type(v) is str for k, v in arguments.items())
    return all(type(a) is str for a in arguments)


def _json_data(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _short(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (an offending value quoted in an error)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_config(cfg: ExecutionConfig) -> None:
    """Settings a DAG run cannot start with (the CLI and REST faces refuse them as well)."""
    if not isinstance(cfg, ExecutionConfig):     # a dict failed later, as an AttributeError
        raise ValidationError(f"a DAG's settings are an ExecutionConfig, not "
                              f"{type(cfg).__name__} (ExecutionConfig(**settings) makes one)")
    n = cfg.max_concurrent_nodes
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValidationError(f"max_concurrent_nodes must be an integer >= 1, not {n!r}")
    r = cfg.max_retries
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        # "2" failed the run with a TypeError before any node ran; -1 meant no retries
        raise ValidationError(f"max_retries must be an integer >= 0, not {r!r}")
    for name in ("retry_failed_nodes", "no_cache", "compression", "async_execution"):
        if not isinstance(getattr(cfg, name), bool):      # "no" is a true value
            raise ValidationError(f"{name} must be True or False, not {getattr(cfg, name)!r}")


#: Errors of an isolated node that passed the server's limits (decision 0076): not retried by
#: the scheduler's own policy.
_CEILINGS = ("twingraph.errors.MemoryLimitExceeded", "twingraph.errors.TaskTimeout")

#: Seconds ``DynamicScheduler.close`` waits for the executions it cancels to record their end.
CLOSE_WAIT = 10.0


def _close_engine(engine: Engine) -> None:
    """Close an engine a ``DynamicScheduler`` made (its finalizer: ``close()``, or the
    scheduler collected). A collection can run on any thread, one of the engine's own too
    (its recorder, a worker, a run's driver: all named ``twingraph-...``), where closing would
    wait for that very thread: there it is closed from a thread of its own."""
    if threading.current_thread().name.startswith("twingraph-"):
        threading.Thread(target=_close_quietly, args=(engine,), daemon=True,
                         name="engine-close").start()
    else:
        _close_quietly(engine)


def _close_quietly(engine: Engine) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - nobody to tell: the scheduler is gone or closing
        pass


#: Finished executions a scheduler keeps its bookkeeping of (result, progress, run id): the
#: newest this many. A long-lived server runs one scheduler for every execute-dynamic request;
#: an older execution is still a run in the metadata store (``/api/v1/runs/{run_id}``).
KEEP_FINISHED = 10_000


class DynamicScheduler:
    """Runs ``DAGDefinition``s on an engine; one run per DAG, tracked by ``dag_id``."""

    def __init__(self, storage: Any, config: ExecutionConfig | None = None, *,
                 engine: Engine | None = None, metadata: Any = None,
                 error_recovery: ErrorRecoveryManager | None = None,
                 isolate: bool = False, node_timeout: float | None = None,
                 keep_finished: int = KEEP_FINISHED) -> None:
        """``isolate``: run every local node in a worker process of the engine's local
        executor (its memory limit, if it has one, applies), never in this process; a node
        that passes ``node_timeout`` seconds (if given: a ceiling over its own timeout) is
        stopped, killed when isolated. The server isolates (decision 0076); embedded use
        keeps the default, nodes in this process.

        ``keep_finished``: how many finished executions answer ``results``, progress and
        ``node_results`` (the newest; an older one is forgotten here, its run stays recorded).

        An engine made here (no ``engine`` given) is the scheduler's own: ``close()`` (or
        leaving a ``with`` block) closes it, and so does the scheduler becoming unreachable
        (its threads lived as long as the process: ~3.5 per scheduler). A given ``engine``,
        and ``storage`` always, stay the caller's to close."""
        if isinstance(keep_finished, bool) or not isinstance(keep_finished, int) \
                or keep_finished < 1:
            raise ValidationError(f"keep_finished must be an integer >= 1, not {keep_finished!r}")
        if node_timeout is not None and (isinstance(node_timeout, bool)
                                         or not isinstance(node_timeout, (int, float))
                                         or not 0 < node_timeout < float("inf")):
            raise ValidationError(f"node_timeout must be a positive number of seconds, "
                                  f"not {node_timeout!r}")
        if config is not None:
            _check_config(config)
        self.storage = storage
        self.config = config or ExecutionConfig()
        self.isolate, self.node_timeout = bool(isolate), node_timeout
        # Retry rules for failed nodes: given, or the config's (retry_failed_nodes/max_retries,
        # backoff factor 2 as the document's ErrorRecoveryManager defaults to).
        self.error_recovery = error_recovery
        self.engine = engine or Engine(results=storage, metadata=metadata)
        self._closed = False
        self._finalizer = None if engine is not None else \
            weakref.finalize(self, _close_engine, self.engine)
        from twingraph.engine import streaming_node      # imported here: it builds on this module
        self.executor: StreamingNodeExecutor = streaming_node.StreamingNodeExecutor(
            storage, spool_threshold=self.config.streaming_threshold)
        self.active_executions: dict[str, threading.Thread] = {}
        self.execution_states: dict[str, ExecutionProgress] = {}
        self.results: dict[str, RunResult] = {}
        self._dag_runs: dict[str, str] = {}
        # dag_id -> its run's tasks, kept only when there is no metadata store to read
        self._run_tasks: dict[str, dict[str, Any]] = {}
        # dag_id -> its nodes, kept for an execution that ended before submitting them all
        # (cancelled): ``node_results`` reports the rest as CANCELLED
        self._short: dict[str, Plan] = {}
        self.keep_finished = keep_finished
        self._finished: OrderedDict[str, None] = OrderedDict()    # oldest first
        self._claim = threading.Lock()     # "already running?" and taking the id: one step
        # run id (or ``dag:<id>`` before its run started) -> why a cancel was asked for it
        # (once is enough)
        self._cancelling: dict[str, str] = {}

    # -- lifetime ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Stop using this scheduler; idempotent. Executions still running are cancelled
        ("the scheduler was closed") and waited for, up to ``timeout`` seconds in all, so that
        each records its end (CANCELLED); then the engine is closed if the scheduler made it
        (a caller's engine and the storage are left open). Afterwards ``submit_dag``/``run``
        raise ``SchedulingError``; what has finished can still be read (``results``,
        ``node_results``, progress)."""
        with self._claim:      # a submit took its id before (it is cancelled), or it is refused
            if self._closed:
                return
            self._closed = True
            running = dict(self.active_executions)
        for dag_id in running:
            self._request_cancel(dag_id, "the scheduler was closed")
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for thread in running.values():
            if thread is not me and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        # Here, not through the finalizer: an error closing it is the caller's to see.
        if self._finalizer is not None and self._finalizer.detach() is not None:
            self.engine.close()

    def __enter__(self) -> DynamicScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the document's API ---------------------------------------------------------------
    async def submit_dag(self, dag: DAGDefinition, config: ExecutionConfig | None = None) -> str:
        """Validate and start ``dag``; returns its id at once (the run goes on in a thread).
        ``config`` overrides the scheduler's config for this DAG only (a server shares one
        scheduler between requests that each ask for their own ``max_concurrent_nodes``)."""
        self._check_open()
        _check_config(config or self.config)
        plan = self._validate_dag(dag)
        await asyncio.to_thread(self._wait_cancelled, dag.dag_id)
        started = threading.Event()
        # ``async def`` operations are awaited on this (the caller's) loop, as the document
        # awaits them: they may share its queues, locks and clients.
        t = threading.Thread(target=self._run_dag, daemon=True, name=f"twingraph-dag-{dag.dag_id}",
                             args=(dag, plan, started, config, asyncio.get_running_loop()))
        self._begin(dag, t)
        t.start()
        await asyncio.to_thread(started.wait)
        return dag.dag_id

    async def get_execution_progress(self, dag_id: str) -> ExecutionProgress | None:
        run_id = self._dag_runs.get(dag_id)
        loop = self.engine.runs.get(run_id) if run_id else None
        state = self.execution_states.get(dag_id)
        if loop is not None and state is not None:
            live = self._progress(dag_id, loop.progress(), total=state.total_nodes)
            with self._claim:
                # Kept only while it still runs: an execution that ended meanwhile has its
                # final progress (or was forgotten), which this must not replace or bring back.
                if dag_id in self.active_executions and self.execution_states.get(dag_id) is state:
                    self.execution_states[dag_id] = live
                    return live
                return self.execution_states.get(dag_id)
        return state

    async def cancel_execution(self, dag_id: str) -> bool:
        """Cancel a running execution; False if it is not running, or is already being
        cancelled (a second call, as in the document, where the first removes it)."""
        return self._request_cancel(dag_id, "execution cancelled")

    def _request_cancel(self, dag_id: str, reason: str) -> bool:
        with self._claim:
            if dag_id not in self.active_executions:
                return False
            run_id = self._dag_runs.get(dag_id)
            key = run_id or f"dag:{dag_id}"
            if key in self._cancelling:
                return False
            self._cancelling[key] = reason
            if run_id is None:
                # Taken, its run not started yet: it is cancelled as it starts (``on_run``);
                # answered False before, and a REST DELETE then said "cancelled" wrongly.
                return True
        return self.engine.cancel(run_id, reason)

    def run_id(self, dag_id: str) -> str | None:
        """The engine run id of ``dag_id``'s latest execution (None before it started)."""
        return self._dag_runs.get(dag_id)

    async def wait_for_completion(self, dag_id: str, timeout: float | None = None) -> RunResult:
        t = self.active_executions.get(dag_id)
        if t is not None:
            await asyncio.to_thread(t.join, timeout)
        result = self.results.get(dag_id)
        if result is None:
            if dag_id in self.active_executions:
                raise TimeoutError(f"DAG {dag_id} still running")
            raise NotFoundError(f"DAG {dag_id!r} has not been executed by this scheduler, or "
                                f"finished before its newest {self.keep_finished} executions")
        return result

    async def get_node_results(self, dag_id: str,
                               node_ids: Iterable[str] | None = None) -> dict[str, ExecutionResult]:
        """``node_results`` without blocking the event loop."""
        return await asyncio.to_thread(self.node_results, dag_id, node_ids)

    # -- synchronous convenience ----------------------------------------------------------
    def node_results(self, dag_id: str,
                     node_ids: Iterable[str] | None = None) -> dict[str, ExecutionResult]:
        """Each node of ``dag_id``'s latest execution (or only ``node_ids``) as the document's
        ``ExecutionResult``: its status, its value (``result_data``, read from the result store,
        where a DAG run keeps it under the node's structural key), the error of a failed node
        and how long it ran. Read from the run's task records, so it needs the engine's
        metadata store; while the DAG runs, a node the run has not taken in yet has no record
        and is left out; once it has ended (cancelled before taking them all in), such a node
        is CANCELLED. Raises ``NotFoundError`` for a DAG this scheduler has not run.
        A completed node whose value cannot be read (gone from the store, found corrupted and
        removed, not decodable) is FAILED here with the reason; the other nodes are returned."""
        run_id = self._dag_runs.get(dag_id)
        if run_id is None:
            raise NotFoundError(f"DAG {dag_id!r} has not been executed by this scheduler")
        wanted = None if node_ids is None else set(node_ids)
        if self.engine.metadata is None:
            return self._never_submitted(dag_id, wanted, self._results_in_memory(dag_id, wanted))
        out: dict[str, ExecutionResult] = {}
        for t in self.engine.metadata.get_tasks(run_id):
            if wanted is not None and t.node_id not in wanted:
                continue
            status = _TASK_TO_NODE[t.state.value]
            ms = None
            if t.started_at is not None and t.ended_at is not None:
                ms = int((t.ended_at - t.started_at) * 1000)
            if status is NodeStatus.COMPLETED:
                value, unreadable = self._read_value(t.result_key)
                if unreadable is not None:
                    out[t.node_id] = ExecutionResult(t.node_id, NodeStatus.FAILED,
                                                     error_message=unreadable,
                                                     execution_time_ms=ms)
                    continue
            else:
                value = None
            out[t.node_id] = ExecutionResult(t.node_id, status, result_data=value,
                                             error_message=t.error or None,
                                             execution_time_ms=ms)
        return self._never_submitted(dag_id, wanted, out)

    def _never_submitted(self, dag_id: str, wanted: set[str] | None,
                         out: dict[str, ExecutionResult]) -> dict[str, ExecutionResult]:
        """``out`` with the nodes an ended execution never took in (it was cancelled while
        its body submitted them a window at a time) as CANCELLED: they will not run, and its
        progress counts them so."""
        plan = self._short.get(dag_id)
        if plan is None or self._dag_runs.get(dag_id) != self.results.get(
                dag_id, RunResult("", RunState.FAILED)).run_id:
            return out
        for node in plan.nodes:
            nid = node.node_id
            if nid not in out and (wanted is None or nid in wanted):
                out[nid] = ExecutionResult(nid, NodeStatus.CANCELLED,
                                           error_message="the execution ended before this "
                                                         "node was submitted")
        return out

    def _read_value(self, key: str | None) -> tuple[Any, str | None]:
        """(value, None) for a completed node's stored result, or (None, why it cannot be
        read): missing from the store, corrupted (``Engine.load_value`` removes the entry, so
        the next run recomputes it), or not decodable. One node's unreadable result must not
        hide the others' (``node_results`` raised for the whole DAG)."""
        try:
            return self.engine.load_value(key), None
        except Exception as exc:  # noqa: BLE001 - reported as this node's result
            return None, f"its result could not be read: {error_text(exc)}"

    def _results_in_memory(self, dag_id: str,
                           wanted: set[str] | None) -> dict[str, ExecutionResult]:
        """``node_results`` of a scheduler without a metadata store (the document's
        ``DynamicScheduler(storage, config)``): read from the run's own tasks, which it keeps
        for its newest ``keep_finished`` executions. No durations: a task's times are not kept
        once it has ended."""
        tasks = self._run_tasks.get(dag_id)
        if tasks is None:
            raise ConfigurationError("node results are read from the run's task records: "
                                     "give the scheduler (or its engine) a metadata store")
        out: dict[str, ExecutionResult] = {}
        for t in list(tasks.values()):          # the run may still be taking tasks in
            if wanted is not None and t.node_id not in wanted:
                continue
            status = _TASK_TO_NODE[t.state.value]
            value = None
            if status is NodeStatus.COMPLETED:
                value, unreadable = (t.value, None) if t.value is not UNLOADED else \
                    self._read_value(t.cache_key)
                if unreadable is not None:
                    out[t.node_id] = ExecutionResult(t.node_id, NodeStatus.FAILED,
                                                     error_message=unreadable)
                    continue
            # A node that succeeded on a retry keeps its failed attempt's error on the task:
            # not the result's (as the metadata store's task rows, ``snapshot.task_rows``).
            out[t.node_id] = ExecutionResult(
                t.node_id, status, result_data=own_copy(value),
                error_message=None if status is NodeStatus.COMPLETED else
                error_text(t.error) or None)
        return out

    def run(self, dag: DAGDefinition) -> RunResult:
        """Validate and run ``dag`` in this thread; returns the engine's RunResult. Like
        ``submit_dag``, refuses a ``dag_id`` that is running (``ValidationError``); while it
        runs, the DAG is an active execution (progress, cancel, ``wait_for_completion``)."""
        self._check_open()
        _check_config(self.config)
        plan = self._validate_dag(dag)
        self._wait_cancelled(dag.dag_id)
        me = threading.current_thread()
        self._begin(dag, me)
        try:
            return self._run_dag(dag, plan, threading.Event())
        finally:
            if self.active_executions.get(dag.dag_id) is me:
                self.active_executions.pop(dag.dag_id, None)

    # -- internals ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SchedulingError("this DynamicScheduler is closed: make a new one to run DAGs")

    def _wait_cancelled(self, dag_id: str, timeout: float = CLOSE_WAIT) -> None:
        """If ``dag_id``'s execution was cancelled and is still winding down, wait (up to
        ``timeout``) for it to end: in the document a cancelled id is free at once
        (``cancel_execution`` removes it), and submitting it again was refused for the
        10-100 ms the cancelled run took to record its end."""
        with self._claim:
            t = self.active_executions.get(dag_id)
            if t is None or t is threading.current_thread():
                return
            run_id = self._dag_runs.get(dag_id)
            if (run_id is None or run_id not in self._cancelling) \
                    and f"dag:{dag_id}" not in self._cancelling:
                return
        t.join(timeout)

    def _begin(self, dag: DAGDefinition, thread: threading.Thread) -> None:
        """Take ``dag.dag_id`` for a new execution run by ``thread``: refused while it is
        running, or once the scheduler is closed; the previous execution's result is dropped
        (until the new one has its own, ``results``/``wait_for_completion`` must not answer
        with the old run)."""
        with self._claim:
            self._check_open()
            if dag.dag_id in self.active_executions:
                raise ValidationError(f"DAG {dag.dag_id!r} is already running")
            self.active_executions[dag.dag_id] = thread
            self._finished.pop(dag.dag_id, None)        # running again: not evicted meanwhile
            # Until its run starts, the id names no run (not the previous execution's).
            self._dag_runs.pop(dag.dag_id, None)
        self.results.pop(dag.dag_id, None)
        self.execution_states[dag.dag_id] = ExecutionProgress(
            dag.dag_id, len(dag.nodes), 0, 0, 0, len(dag.nodes), 0.0)

    def _validate_dag(self, dag: DAGDefinition) -> Plan:
        with gcpace.relaxed():        # one list per node: bulk allocation, nothing to collect
            return self._validated(dag)

    def _validated(self, dag: DAGDefinition) -> Plan:
        if not isinstance(dag, DAGDefinition):      # a dict or a file's text: AttributeError
            raise ValidationError(
                f"submit_dag takes a DAGDefinition, not {type(dag).__name__} (twingraph.dagfile's "
                f"dag_from_dict, parse_dag_text or load_dag_file make one)")
        _check_shapes(dag)
        ids = [n.node_id for n in dag.nodes]
        unique = set(ids)
        if len(unique) != len(ids):
            counts = Counter(ids)
            raise GraphValidationError("duplicate node ids", {i for i, c in counts.items() if c > 1})
        extra = set(dag.dependencies) - unique if dag.dependencies else None
        del unique                     # a set of every id: not kept while validating
        if extra:
            # with whatever else is wrong with the DAG: one error naming every offending node
            # (this one alone hid the others: decision 0083)
            try:
                self._checked_graph(dag, ids)
            except GraphValidationError as other:
                why = {n: "not a node: named in dependencies" for n in extra}
                why.update(other.why)
                raise GraphValidationError(
                    f"dependencies name unknown nodes; {other.reason}",
                    extra | set(other.nodes), why=why) from None
            raise GraphValidationError("dependencies name unknown nodes", extra)
        return self._checked_graph(dag, ids)

    def _checked_graph(self, dag: DAGDefinition, ids: list[str]) -> Plan:
        deps_of = dag._deps_view          # read only, by validate_dag
        known = self.executor.known()
        names = {n.operation for n in dag.nodes}
        # Node -> operation only when some operation is unknown (the error names its nodes).
        operations = {n.node_id: n.operation for n in dag.nodes} if names - known else None
        try:
            deps = {n.node_id: deps_of(n) for n in dag.nodes}
            order = validate_dag(deps, operations, known)
        except (TypeError, GraphValidationError):
            # An argument that is not a string (``_check_shapes`` leaves lists to this check)
            # is never a node id: it always ends up here, as a dangling reference or a
            # TypeError (unhashable; not joinable in the message). Said as what it is.
            _check_argument_ids(n for n in dag.nodes if type(n.arguments) is list)
            raise
        if order == ids:               # written in dependency order, the usual case
            nodes = list(dag.nodes)
        else:
            by_id = {n.node_id: n for n in dag.nodes}
            nodes = [by_id[nid] for nid in order]
        ops = {op: self.executor.resolve(op) for op in names}
        self._check_platforms(ops)  # type: ignore[arg-type]  # resolved: none is None
        _check_calls(nodes, ops)  # type: ignore[arg-type]
        return Plan(nodes, ops)  # type: ignore[arg-type]

    def _check_platforms(self, ops: Mapping[str, tuple[Any, str]]) -> None:
        """A component operation for a platform with no executor, or a local one asking for
        more resources than the machine has, fails the DAG before it runs (as a pipeline
        does), naming the operations."""
        missing: dict[str, list[str]] = {}
        local: list[tuple[str, Any]] = []
        for op, (fn, style) in ops.items():
            if style != "component":
                continue
            spec = getattr(fn, "class_spec")() if isinstance(fn, type) else getattr(fn, "spec", None)
            platform = getattr(spec, "platform", "local")
            if platform not in self.engine.platforms:
                missing.setdefault(platform, []).append(op)
            elif platform == "local" and getattr(spec, "resources", None):
                local.append((op, getattr(spec, "resources")))
        for platform, names in sorted(missing.items()):
            raise ExecutorUnavailable(platform, names, available=self.engine.platforms)
        pool: Any = getattr(self.engine, "local_resources", None)
        if pool is not None:
            for op, resources in local:
                pool.check([op], resources)

    def _spec_for(self, node: NodeDefinition, fn: Any, style: str,
                  cache: dict[str, tuple[ComponentSpec, _OpCall]],
                  config: ExecutionConfig | None = None,
                  loop: asyncio.AbstractEventLoop | None = None) -> tuple[ComponentSpec, _OpCall]:
        entry = cache.get(node.operation)
        cfg = config or self.config
        if entry is None:
            base = getattr(fn, "spec", None) if style == "component" else None
            target = getattr(fn, "fn", fn)
            cv = base.code_version if isinstance(base, ComponentSpec) else code_version(target)
            bound = None if isinstance(base, ComponentSpec) else _bound_to(target)
            if bound is not None:     # ``Scaler(2)`` and ``Scaler(3)``: two versions
                state = instance_state(bound, leaf_hash=self.engine.hash_value)
                cv = sha256_hex(cv.encode() + b"\0" + canonical_json(state))[:16]
            retry = None
            if cfg.retry_failed_nodes and (self.error_recovery or cfg.max_retries > 0):
                recovery = self.error_recovery or ErrorRecoveryManager(cfg.max_retries)
                retry = recovery.retry_policy()
                if retry is not None:
                    # The server's ceilings are not passing trouble: the same node with the
                    # same inputs would pass them again (a component's own policy decides
                    # for itself). In this process a timed-out node is abandoned, not
                    # stopped: a retry would run beside it (ten copies ran at once).
                    retry = dataclasses.replace(retry, never=(
                        *retry.never, *(_CEILINGS if self.isolate else ("twingraph.errors.TaskTimeout",))))
            if isinstance(base, ComponentSpec):
                # Called as ``_OpCall(arguments, parameters, values)``, not as the component
                # is: its own argument names (``core.arguments``) do not apply.
                spec = dataclasses.replace(base, name=node.operation, raw_result=True,
                                           retry_policy=base.retry_policy or retry,
                                           parameters=None)
            else:
                # A plain operation has no timeout of its own: the scheduler's
                # ``node_timeout`` is its limit (raised too: a server's
                # TWINGRAPH_NODE_TIMEOUT=3600 left it at 300 s), else a component's default.
                spec = ComponentSpec(name=node.operation,
                                     qualname=f"{getattr(target, '__module__', '?')}:"
                                              f"{getattr(target, '__qualname__', node.operation)}",
                                     code_version=cv, retry_policy=retry, raw_result=True,
                                     timeout=float(self.node_timeout or DEFAULT_TIMEOUT))
            spec = self._limited(spec)
            call = fn
            if spec.executor == "process" and style == "component" and not isinstance(fn, type) \
                    and inspect.isfunction(getattr(fn, "fn", None)):
                # A ``@component`` is called through its function (``_call_node``): only that
                # travels to the worker process, not the decorator object, which holds the
                # last engine that ran it (locks, thread-locals: nothing that pickles).
                call = fn.fn
            entry = cache[node.operation] = (spec, _OpCall(call, style, loop))
        return entry

    def _limited(self, spec: ComponentSpec) -> ComponentSpec:
        """``spec`` under this scheduler's isolation: a local node in a worker process, its
        timeout at most ``node_timeout``. The memo key does not change (it holds neither the
        executor nor the timeout): results are shared with in-process runs."""
        changes: dict[str, Any] = {}
        if self.node_timeout is not None and spec.timeout > self.node_timeout:
            changes["timeout"] = float(self.node_timeout)
        if self.isolate and spec.platform == "local":
            changes["executor"] = "process"
        return dataclasses.replace(spec, **changes) if changes else spec

    def plan(self, dag: DAGDefinition) -> Plan:
        """Validate ``dag`` (ids, references, cycles, operations) and return its nodes in
        topological order with their callables; raises ``GraphValidationError``."""
        return self._validate_dag(dag)

    def body(self, dag: DAGDefinition, plan: Plan,
             on_run: Callable[[Any], None] | None = None,
             config: ExecutionConfig | None = None,
             loop: asyncio.AbstractEventLoop | None = None) -> Callable[[Any], dict[str, Any]]:
        """The run body that submits ``plan``'s nodes to a run (for ``Engine.run``);
        ``async def`` operations are awaited on ``loop`` when it runs (``_call_node``)."""
        specs: dict[str, tuple[ComponentSpec, _OpCall]] = {}

        def body(run: Any) -> dict[str, Any]:
            if on_run is not None:
                on_run(run)
            tasks: dict[str, Any] = {}
            inputs_of = dag._deps_view      # the inputs the operation is given, each once
            call = run.call_declared
            ops = plan.ops
            try:
                for i, node in enumerate(plan.nodes):
                    if i & 1023 == 0:
                        _wait_for_window(run)
                    entry = specs.get(node.operation)
                    spec, op = entry if entry is not None else \
                        self._spec_for(node, *ops[node.operation], specs, config, loop)
                    names = inputs_of(node)
                    md = node.metadata
                    if md and "inputs" in md:  # values for execute_node: not stored there either
                        md = {k: v for k, v in md.items() if k != "inputs"}
                    tasks[node.node_id] = call(spec, op, node.arguments, node.parameters, names,
                                               [tasks[n] for n in names], node.node_id, md)
            except RunStopped:
                pass        # cancelled: the nodes not submitted yet never will be (no error)
            return {}
        return body

    def _run_dag(self, dag: DAGDefinition, plan: Plan,
                 started: threading.Event, config: ExecutionConfig | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> RunResult:
        cfg = config or self.config
        def on_run(run: Any) -> None:
            with self._claim:
                self._dag_runs[dag.dag_id] = run.run_id
                why = self._cancelling.pop(f"dag:{dag.dag_id}", None)
                if why is not None:                   # cancelled before its run started
                    self._cancelling[run.run_id] = why
                    run.cancel(why)
            if self.engine.metadata is None:     # no task records: node_results reads these
                self._run_tasks[dag.dag_id] = run.tasks
            started.set()

        body = self.body(dag, plan, on_run, cfg, loop)
        opts = RunOptions(max_parallel=cfg.max_concurrent_nodes,
                          error_handler="continue", no_cache=cfg.no_cache)
        try:
            result = self.engine.run(body, pipeline=dag.dag_id, options=opts,
                                     source={"kind": "dag", "dag_id": dag.dag_id},
                                     params=dict(dag.metadata or {}))
        except BaseException as exc:  # noqa: BLE001 - surfaced through results/progress
            result = RunResult(self._dag_runs.get(dag.dag_id, ""), RunState.FAILED, error=exc)
        finally:
            started.set()
        self.results[dag.dag_id] = result
        if result.progress.get("total", 0) < len(plan.nodes):
            self._short[dag.dag_id] = plan
        else:
            self._short.pop(dag.dag_id, None)
        self.execution_states[dag.dag_id] = self._progress(dag.dag_id, result.progress,
                                                           total=len(dag.nodes), ended=True)
        with self._claim:          # one step: a cancel sees it running, or ended
            self._cancelling.pop(result.run_id, None)
            self._cancelling.pop(f"dag:{dag.dag_id}", None)
            self.active_executions.pop(dag.dag_id, None)
            self._finished[dag.dag_id] = None
            self._finished.move_to_end(dag.dag_id)
            while len(self._finished) > self.keep_finished:
                old, _ = self._finished.popitem(last=False)
                self.results.pop(old, None)
                self.execution_states.pop(old, None)
                self._dag_runs.pop(old, None)
                self._run_tasks.pop(old, None)
                self._short.pop(old, None)
        return result

    @staticmethod
    def _progress(dag_id: str, p: Mapping[str, Any], *, total: int,
                  ended: bool = False) -> ExecutionProgress:
        """Progress over the DAG's ``total`` nodes (some may not be submitted to the run yet).
        The ETA is every node not done yet, submitted or not, at the rate the run's tasks
        finish (the run's own ETA counts only what it was handed: one window of the DAG)."""
        if not p:       # no run (yet): nothing done; ended without one (it failed to start)
            return (ExecutionProgress(dag_id, total, 0, total, 0, 0, 100.0) if ended else
                    ExecutionProgress(dag_id, total, 0, 0, 0, total, 0.0))
        failed = p["failed"] + p["skipped"]      # skipped: an input failed
        cancelled = p["cancelled"]
        done = p["succeeded"] + failed + cancelled
        if ended and total > done:
            # nodes the run never took in (a cancel before the body submitted them: it does
            # so a window at a time) will not run: cancelled, so an ended DAG is at 100 %
            # (a cancelled DAG of 30,000 nodes stayed at 37.5 %, 18,736 "pending")
            cancelled += total - done
            done = total
        eta = None
        rate = p.get("rate")
        if not ended and rate and total > done:
            eta = datetime.fromtimestamp(time.time() + (total - done) / rate,
                                         timezone.utc).isoformat()
        percent = 100.0 * done / total if total else 100.0
        if not ended:
            # 100 % means the execution has ended and its results can be collected (the
            # document's integration polls for it, then collects): its last node done, the
            # run still recording, it is not there yet.
            percent = min(percent, LIVE_MAX_PERCENT)
        return ExecutionProgress(
            dag_id=dag_id, total_nodes=total, completed_nodes=p["succeeded"],
            failed_nodes=failed, running_nodes=p["running"],
            pending_nodes=total - done - p["running"],
            progress_percentage=percent, estimated_completion=eta, cancelled_nodes=cancelled)
