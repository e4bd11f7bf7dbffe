"""The engine: runs pipelines over injected ports (executor, result store, metadata store, clock).

``Engine.run(body, ...)`` starts a run loop on its own thread, executes ``body(run)`` in the
caller's thread (component calls inside submit tasks to the loop), waits until every task is
finished, records the run's end and returns a ``RunResult``. The same loop serves declarative
graphs: their body submits every node up front.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import operator
import os
import pickle
import random
import sys
import threading
import time
import uuid
from types import AsyncGeneratorType, CoroutineType, FunctionType, GeneratorType, MethodType
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twingraph.core import stop
from twingraph.core.codeversion import code_of_value
from twingraph.core.instancestate import attributes
from twingraph.core.hashing import (canonical_json, config_digest, digest_json, digest_value,
                                    enter, key_prefix, leave, mark_walk, pickle_ids, rewind_walk,
                                    sha256_hex, walking)
from twingraph.core.records import AttemptRecord, LogRecord, RunRecord, RunUpdate, TaskRecord, TaskUpdate
from twingraph.core.results import BYTES_ID, StorageMetadata, stored_value_id
from twingraph.core.specs import DEFAULT_TIMEOUT
from twingraph.core.states import (RunState, TaskState, fence as fence_token, fence_epoch,
                                   transition_run)
from twingraph.engine.async_store import AsyncStoreAdapter, as_result_store
from twingraph.engine.awaiting import nested_run, run_awaitable
from twingraph.engine.bodystop import HARD_STOPS, BodyWatch
from twingraph.engine.heartbeats import Heartbeats, taken_over_message
from twingraph.engine.heldstate import _held_digest
from twingraph.engine.loop import RunLoop, RunOptions
from twingraph.engine.memo import PREVIOUS_MAX, TooLarge
from twingraph.engine.timers import HEARTBEAT_INTERVAL
from twingraph.engine.notify import notify
from twingraph.engine import gcpace, tasklog
from twingraph.engine.snapshot import error_text, message_of
from twingraph.engine.driverlock import DriverLock, DriverLocks
from twingraph.engine.recorder import Recorder
from twingraph.engine.resources import LocalResources
from twingraph.engine.refs import substitute
from twingraph.errors import (ConfigurationError, ConflictError, ExecutorUnavailable,
                              IntegrityError, InvalidTransition, NodeExecutionError,
                              NotFoundError, PipelineCancelled, PipelineFailed, PipelineTimeout,
                              RunStopped, TwinGraphError, ValidationError)
from twingraph.ports import Clock, EventSink, Executor, MetadataStore, ResultStore
from twingraph.registry import get_error_handler
from twingraph import serialization

_current = threading.local()

log = logging.getLogger("twingraph.engine")


def current_run() -> RunLoop | None:
    """The run whose pipeline body is executing on this thread, if any."""
    return getattr(_current, "run", None)


_live: set[str] = set()        # ids of the runs going on in this process, on any engine


def runs_live() -> bool:
    """Whether a run is going on in this process (on any thread, on any engine)."""
    return bool(_live)


def _is_interrupt(exc: BaseException | None) -> bool:
    """Whether the body ended with Ctrl-C (or SIGTERM, cli/signals.py). Not a task's own
    ``KeyboardInterrupt`` the body re-raised (``.result()`` raises a ``NodeExecutionError``
    that is also one): that is a failed task, and the run was cancelled as if by Ctrl-C."""
    return isinstance(exc, KeyboardInterrupt) and not isinstance(exc, NodeExecutionError)


def _interruption(exc: KeyboardInterrupt) -> str:
    """Why a run is cancelled by a ``KeyboardInterrupt``: its text when it has one (SIGTERM,
    cli/signals.py), else Ctrl-C."""
    return str(exc) or "interrupted (Ctrl-C)"


class SystemClock:
    # The builtins themselves, not methods wrapping them: the loop reads the clock several
    # times per task.
    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


@dataclass
class RunResult:
    run_id: str
    state: RunState
    value: Any = None
    error: BaseException | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def unwrap(self) -> Any:
        """The pipeline's return value, or raise the run's error."""
        if self.error is not None:
            raise self.error
        return self.value


class _Stats:
    """Per component: how many runs were seen and a moving average of their duration."""
    __slots__ = ("n", "avg")

    def __init__(self) -> None:
        self.n, self.avg = 0, 0.0


INLINE_SAMPLES = 8            # observations before a component may run inline
INLINE_AVG_SECONDS = 0.0002   # ... if its moving average stays below this
SLOW_CALL_SECONDS = 0.01      # one call slower than this sends it back to the thread pool
#: writer='auto': a run that has taken in this many tasks moves the writes to a child process
#: (decision 0012); smaller runs never pay for starting one.
OFFLOAD_AFTER = 20_000
#: Seconds a run's end waits for its custom error handler calls still going (they run beside
#: the run loop: ``RunLoop._error_handlers``); one that takes longer is left running.
HANDLER_WAIT = 30.0
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
WRITERS = ("auto", "thread", "process")


#: How many of a pipeline's newest runs a miss's reason looks through for one that has ended.
PREVIOUS_RUNS_LOOKED_AT = 20

#: Specs whose key prefix and fingerprint an engine keeps (the oldest go first): each DAG run
#: makes specs of its own, and a long-lived engine kept every one (a leak of ~1.4 KB a run).
SPEC_CACHE = 4096


def _make_room(cache: dict[int, Any]) -> None:
    if len(cache) >= SPEC_CACHE:
        try:
            cache.pop(next(iter(cache)))
        except (StopIteration, KeyError, RuntimeError):    # another thread got there first
            pass


def _state_digest(value: Any) -> str | None:
    """A user-class instance's (or a bound method's object's) attributes as a memo key sees
    them: walked like arguments (``digest_value``: sets in sorted order, nested objects by
    this same rule), not pickled (a set's pickle follows the process's hash seed: a miss in
    every process). Its attributes are its ``__dict__`` and its slots. None when it has
    neither or cannot be walked (too deep, or a value that does not digest)."""
    owner = value.__self__ if type(value) is MethodType else value
    state = attributes(owner)
    builtin = _builtin_value(owner)
    if builtin is not _NO_VALUE:
        # ``class Name(str)``: the str itself is what it holds (its __dict__ is empty: every
        # Name had one key, and Name("BOB") was served Name("ALICE")'s result)
        state = {**(state or {}), "\0value": builtin}
    elif _holds_more(owner):
        return None         # a deque, date, Decimal or ndarray subclass: by its pickle
    if state is None:
        return None
    # An object met before in this digest (inside itself: a tree whose nodes point at their
    # parent; or elsewhere: [a, a]) is a reference to it (``hashing.enter``).
    outermost = not walking()
    mark = mark_walk()
    seen = enter(owner)
    if seen is not None:
        return f"ref{seen['ref']}"
    try:
        digest = digest_value(state, None, _no_reference, Engine.hash_value)
        return sha256_hex(f"{type(owner).__module__}.{type(owner).__qualname__}\0".encode()
                          + digest_json(digest))
    except (TypeError, ValueError):
        # hashed by its pickle instead: what this walk met inside it is not in the digest,
        # and no later reference may name it
        rewind_walk(mark)
        return None
    except RecursionError:
        # too deep to walk (a chain of thousands of objects): the outermost walk hashes it
        # by its pickle; caught at every level, it was walked again at each (slow as a cycle)
        if outermost:
            return None
        raise
    finally:
        leave()


def _holds_more(obj: Any) -> bool:
    """Whether ``obj`` holds state its attributes do not show: its reduction passes arguments
    to its class (a subclass of ``deque``, ``date``, ``Decimal``, ``ndarray``, an exception
    with args) or items. Keyed by its attributes alone, two of them with different contents
    had one key."""
    try:
        rv = obj.__reduce_ex__(2)
    except Exception:  # noqa: BLE001 - cannot tell: by its attributes, as before
        return False
    if not isinstance(rv, tuple) or len(rv) < 2:
        return True
    args = rv[1]
    plain = isinstance(args, tuple) and len(args) == 1 and args[0] is type(obj)
    return not plain or any(x is not None for x in rv[3:5])


_NO_VALUE = object()
#: Built-in types a user class may derive from, each with how to read the built-in value of
#: an instance past what the subclass overrides (its own ``__str__``, ``__iter__``...).
_BUILTIN_VALUES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (str, str.__str__), (bytes, bytes), (bytearray, bytes), (bool, bool),
    (int, int.__int__), (float, float.__float__),
    (complex, complex.__complex__),
    (tuple, lambda v: tuple(tuple.__iter__(v))), (list, lambda v: list(list.__iter__(v))),
    (dict, lambda v: dict(dict.items(v))), (frozenset, lambda v: frozenset(frozenset.__iter__(v))),
    (set, lambda v: set(set.__iter__(v))))


def _builtin_value(obj: Any) -> Any:
    """The built-in value an instance of a subclass of a built-in type holds (``_NO_VALUE``
    for anything else)."""
    for base, read in _BUILTIN_VALUES:
        if isinstance(obj, base):
            return read(obj)
    return _NO_VALUE


def _no_reference(value: Any) -> Any:
    raise TypeError("an object's attributes hold no futures")


#: What ``serialization.decode`` raises for bytes that are not what their encoding says (a
#: class missing in this process, an ``ImportError``, is not damage: left as it is).
_UNREADABLE = (ValidationError, pickle.UnpicklingError, EOFError, json.JSONDecodeError,
               UnicodeDecodeError)


class Engine:
    def __init__(self, *, results: ResultStore, metadata: MetadataStore | None = None,
                 executor: Executor | None = None, executors: Iterable[Executor] = (),
                 clock: Clock | None = None,
                 events: EventSink | None = None, rng: random.Random | None = None,
                 flush_interval: float = 0.05, project: str = "default",
                 writer: str | None = None,
                 local_resources: Mapping[str, Any] | None = None) -> None:
        """``writer``: where the recorder writes batches — 'thread' (in this process),
        'process' (a child process from the start) or 'auto' (a child process once its runs
        have taken in ``OFFLOAD_AFTER`` tasks in all); default ``$TWINGRAPH_WRITER`` or 'auto'. Only a
        SQLite result store and an SQL metadata store (file or server) can be written from a
        child; with others the thread writes.

        ``local_resources``: what local tasks that ask for ``resources`` may hold at once, as
        ``{"cpu": 8, "memory": "16Gi", "gpu": 1}``; what it leaves out is detected (GPUs:
        ``resources.detected_gpus``).
        Default ``$TWINGRAPH_LOCAL_RESOURCES`` (``cpu=8,memory=16Gi,gpu=1``). Decision 0014."""
        if results is None:
            raise ConfigurationError("an engine needs a result store (a StorageInterface such "
                                     "as SQLiteStorage or FilesystemStorage), got None")
        results = as_result_store(results)     # a user's async StorageInterface: adapted
        self._pid = os.getpid()
        given = writer
        writer = writer or os.environ.get("TWINGRAPH_WRITER") or "auto"
        if writer not in WRITERS:
            raise ConfigurationError(f"{'writer' if given else 'TWINGRAPH_WRITER'} must be one "
                                     f"of {', '.join(WRITERS)}, got {writer!r}")
        if executor is None:
            from twingraph.executors.local import LocalExecutor
            executor = LocalExecutor()
        self.results, self.metadata, self.executor = results, metadata, executor
        # One executor per platform (the architecture's executor registry): ``executor`` runs
        # its own platform's tasks ('local' by default), ``executors`` add others.
        self.executors: dict[str, Executor] = {executor.platform: executor}
        for extra in executors:
            if extra.platform in self.executors:
                raise ConfigurationError(f"two executors for platform {extra.platform!r}")
            self.executors[extra.platform] = extra
        self.platforms = frozenset(self.executors)
        self.local_resources = LocalResources(local_resources)
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.project = project
        self._sinks: list[EventSink] = [events] if events else []
        self.has_sinks = bool(self._sinks)      # checked on the hot path: a plain attribute
        self.heartbeats = Heartbeats(metadata, on_taken_over=self._taken_over)
        self._driver_locks = DriverLocks.of(metadata)
        self._held: dict[str, DriverLock] = {}      # run id -> the lock this process drives it by
        self._sweep_due = 0.0       # when ``sweep_driver_locks`` is next done (monotonic)
        self.recorder = Recorder(results, metadata, interval=flush_interval,
                                 on_stored=self._on_stored, on_stale=self._on_stale,
                                 on_lost=self._on_lost)
        self.offload_after = OFFLOAD_AFTER if writer == "auto" else None
        self.tasks_taken = 0        # by runs that have ended: a long-lived engine offloads too
        self._taken_lock = threading.Lock()
        if writer == "process":
            self.recorder.offload()
        self.runs: dict[str, RunLoop] = {}
        self._stats: dict[str, _Stats] = {}
        self._fingerprints: dict[int, tuple[Any, dict[str, str]]] = {}
        self._prefixes: dict[int, tuple[Any, bytes]] = {}   # id(spec) -> (spec kept alive, prefix)
        self.error_handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}

    # -- events ---------------------------------------------------------------------------
    def subscribe(self, sink: EventSink) -> Callable[[], None]:
        """Receive engine events; returns a function that unsubscribes."""
        self._sinks.append(sink)
        self.has_sinks = True

        def unsubscribe() -> None:
            self._sinks.remove(sink)
            self.has_sinks = bool(self._sinks)
        return unsubscribe

    def emit(self, event: dict[str, Any]) -> None:
        for s in self._sinks:
            try:
                s(event)
            except Exception:  # noqa: BLE001 - a sink must never break the engine
                pass

    # -- values ---------------------------------------------------------------------------
    @staticmethod
    def invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return normalize(fn(*args, **kwargs))

    @staticmethod
    def invoke_raw(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return collect(fn(*args, **kwargs))

    @staticmethod
    def with_task_logs(invoke: Callable[..., Any], loop: Any, node_id: str) -> Callable[..., Any]:
        """``invoke`` with ``twingraph.get_logger()`` records attributed to this task."""
        def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            prev = tasklog.set_current((loop, node_id))
            try:
                return invoke(fn, args, kwargs)
            finally:
                tasklog.set_current(prev)
        return run

    @staticmethod
    def with_environment(invoke: Callable[..., Any], env: Mapping[str, str]) -> Callable[..., Any]:
        """``invoke`` with ``env`` set in ``os.environ`` for the call (and restored after):
        for a worker process, which runs one task at a time."""
        env = dict(env)

        def run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            import os
            # Set one by one inside the ``try``, remembering each variable once it is set: if
            # one cannot be set (the task fails), those set before it are still restored, and
            # never leak into the next task this worker runs.
            saved: dict[str, str | None] = {}
            try:
                for k, value in env.items():
                    old = os.environ.get(k)
                    os.environ[k] = value
                    saved[k] = old
                return invoke(fn, args, kwargs)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        return run

    @staticmethod
    def encode(value: Any) -> serialization.Encoded:
        return serialization.encode(value, freeze=True)

    @staticmethod
    def hash_value(value: Any) -> str:
        if type(value) is functools.partial:
            # its function as a function argument is keyed, and its arguments as arguments
            # are (walked): pickled, an instance of a class of the pipeline's file in it was
            # written with cloudpickle's per-process class id, a miss in every process
            mark = mark_walk()
            try:
                held = digest_value([list(value.args), dict(value.keywords or {}),
                                     dict(getattr(value, "__dict__", None) or {})],
                                    None, _no_reference, Engine.hash_value)
                return sha256_hex(f"partial\0{Engine.hash_value(value.func)}\0".encode()
                                  + digest_json(held))
            except (TypeError, ValueError, RecursionError):
                rewind_walk(mark)                # by its pickle, as before
        code = code_of_value(value)
        if code is not None:
            if type(value) is FunctionType or isinstance(value, type):
                # a function or a class: what it is, is its code (its pickle names it only),
                # and for a function what its closure cells and defaults hold
                held = _held_digest(value) if type(value) is FunctionType else ""
                return f"code:{getattr(value, '__qualname__', '?')}:{code}{held}"
            if type(value) is not functools.partial:   # its arguments are in its pickle
                state = _state_digest(value)
                if state is not None:       # an instance of a user class, a bound method
                    return sha256_hex(f"obj:{state}\0{code}".encode())
        enc = serialization.encode(value)
        if enc.encoding == "pickle" and enc.size <= PICKLE_IDS_MAX:
            # inside a walk, what its pickle holds is numbered with the rest (``pickle_ids``);
            # pickled again so, as that calls back for every object it writes (8-12x the
            # time): a larger pickle is keyed as it is (decision 0005, session 24)
            ids = pickle_ids(value)
            if ids is not None:
                enc = serialization.encode(value, persistent_id=ids)
        encoding = enc.encoding
        if encoding == "bytes" and type(value) is not bytes:
            # bytes, bytearray and memoryview encode alike; a component may tell them apart
            encoding = f"bytes:{type(value).__name__}"
        h = serialization.typed_hash(encoding, enc.content_hash)
        # an instance of a user class, a bound method: its state, and its class's code
        return h if code is None else sha256_hex(f"{h}\0{code}".encode())

    def load_value(self, key: str | None, expected: str | None = None,
                   node_id: str | None = None) -> Any:
        """The value stored under ``key``; with ``expected`` (the content hash a run recorded
        for it), ``ConflictError`` if the stored one is another value: a run that stored a
        different value under the same key since (a component whose output is not the same
        every time: random, a clock) overwrote it, and a consumer silently got that run's
        value for this run's producer."""
        if key is None:
            raise NotFoundError("task has no stored result")
        read = getattr(self.results, "read", None)     # a port implementation without it:
        if read is None:                                # head + get, as before there was read
            read = self._head_then_get
        try:
            found = read(key)
        except IntegrityError as exc:
            # A corrupted memo entry would poison every later run that hits it: remove it, so
            # the next run misses and recomputes (this one fails with the error).
            raise self._dropped(key, exc) from exc.__cause__
        if found is None:
            raise NotFoundError(f"result {key} is not in the result store")
        meta, data = found
        # ``expected`` is a value id (``core.results.value_id``): raw bytes are marked, and
        # compared bare they never matched, so a consumer of a bytes result that came from
        # the memo failed with this in every run (a DAG operation returning ``bytes``)
        if expected is not None and meta.content_hash and expected != (
                stored_value_id(meta) if expected.startswith(BYTES_ID) else meta.content_hash):
            raise ConflictError(
                f"the stored result of {node_id or key} is no longer the value this run "
                f"computed (content hash {expected[:12]}..., now {meta.content_hash[:12]}...): "
                f"another run stored a different value under the same key, so the component "
                f"does not give the same output for the same inputs. Run again (the stored "
                f"value is then used throughout), or give it cache=False (results of its own "
                f"per run)")
        encoding = (meta.metadata or {}).get("encoding", "pickle")
        try:
            return serialization.decode(data, encoding)
        except _UNREADABLE as exc:
            # Its bytes are the ones stored (their hash was checked), but they do not decode
            # as its metadata says: damaged like a corrupted value, and removed like one.
            bad = IntegrityError(key, meta.content_hash or "", meta.content_hash or "")
            bad.args = (f"result {key!r} is damaged: its bytes (their hash checked) do not "
                        f"decode as {encoding!r}: {type(exc).__name__}: {exc}",)
            raise self._dropped(key, bad) from exc

    def _dropped(self, key: str, exc: IntegrityError) -> IntegrityError:
        """``exc``, saying so if the damaged entry ``key`` could be removed from the store."""
        try:
            removed = self.results.delete(key)
        except Exception:  # noqa: BLE001 - the damage is the error to report
            removed = False
        if removed:
            exc.args = (f"{exc}; the corrupted entry was removed from the result store, so "
                        "the next run recomputes it",)
        return exc

    def _head_then_get(self, key: str) -> tuple[StorageMetadata, Any] | None:
        meta = self.results.head(key)
        data = None if meta is None else self.results.get(key)
        return None if meta is None or data is None else (meta, data)

    def result_meta(self, run_id: str, task: Any, enc: serialization.Encoded) -> StorageMetadata:
        """Metadata stored with a result: how to decode it, and the pipeline (``dag_id``) that
        produced it, for ``list_results(dag_id)``. Which run and task produced it is the
        metadata store's business (task rows carry ``result_key``)."""
        loop = self.runs.get(run_id)
        md = {"encoding": enc.encoding, "dag_id": loop.pipeline if loop is not None else None}
        if task.result_md:          # a declared node's own metadata; the engine's keys win
            md = {**task.result_md, **md}
        # Positional: one is built per task result (keywords cost ~0.3 µs more).
        return StorageMetadata(task.cache_key, enc.data_type, enc.content_hash, enc.size, None,
                               None, md)

    def key_prefix(self, spec: Any) -> bytes:
        fp = self._prefixes.get(id(spec))
        if fp is None:
            _make_room(self._prefixes)
            fp = self._prefixes[id(spec)] = (spec, key_prefix(spec.name, spec.code_version,
                                                              spec.memo_config(),
                                                              self.hash_value))
        return fp[1]

    def fingerprint(self, spec: Any) -> dict[str, Any]:
        """What every task row of ``spec`` records about its definition: code version, config
        digest, and the component's ``labels`` (for tracking: runs show, REST, lineage) and
        ``resources`` (what it asked for; the local executor reserves none of it)."""
        entry = self._fingerprints.get(id(spec))
        if entry is None:
            fp: dict[str, Any] = {
                "code_version": spec.code_version,
                "config": _config_digest(spec.memo_config())}
            if spec.labels:
                fp["labels"] = dict(spec.labels)
            if spec.resources:
                fp["resources"] = dict(spec.resources)
            _make_room(self._fingerprints)
            entry = self._fingerprints[id(spec)] = (spec, fp)
        return entry[1]

    # -- execution mode -------------------------------------------------------------------
    def executor_for(self, spec: Any) -> Executor:
        """The executor of ``spec``'s platform; ``ExecutorUnavailable`` if there is none (a
        component is never run on another platform in its place)."""
        ex = self.executors.get(spec.platform)
        if ex is None:
            raise ExecutorUnavailable(spec.platform, [spec.name], available=self.platforms)
        return ex

    def choose_mode(self, spec: Any) -> str:
        """How a task runs: 'inline', 'thread' or 'process' on the local executor ('auto' picks
        by measured duration); 'remote' on another platform's executor."""
        if spec.platform != "local":
            return "remote"
        if spec.executor != "auto":
            return spec.executor
        if spec.environment:         # its own variables: only a process of its own has them
            return "process"
        if spec.timeout < DEFAULT_TIMEOUT:
            # A timeout of its own: the call must be stoppable (an inline call is not).
            return "thread"
        st = self._stats.get(spec.qualname)
        if st is not None and st.n >= INLINE_SAMPLES and st.avg <= INLINE_AVG_SECONDS:
            return "inline"
        return "thread"

    def observe(self, spec: Any, duration: float, ok: bool) -> None:
        st = self._stats.get(spec.qualname)
        if st is None:
            st = self._stats[spec.qualname] = _Stats()
        st.n += 1
        if duration >= SLOW_CALL_SECONDS:
            st.avg = max(st.avg, duration)
        else:
            st.avg += (duration - st.avg) * (1.0 if st.n == 1 else 0.1)

    def call_error_handler(self, handler: Any, info: dict[str, Any]) -> str | None:
        """Call a custom error handler (a callable, or a name registered on this engine or with
        ``twingraph.register_error_handler``). Returns what went wrong, for the run's log."""
        fn = handler
        if isinstance(handler, str):
            fn = self.error_handlers.get(handler) or get_error_handler(handler)
        if fn is None:
            problem = (f"error handler {handler!r} is not registered "
                       "(twingraph.register_error_handler)")
            self.emit({"event": "log", "level": "warning", "message": problem})
            return problem
        try:
            fn(info)
        except BaseException as exc:  # noqa: BLE001 - a failing handler must not break the run
            # (``sys.exit()`` in one crashed the run loop and failed healthy tasks with it)
            return f"error handler {handler!r} failed: {error_text(exc)}"
        return None

    # -- runs -----------------------------------------------------------------------------
    def check_process(self) -> None:
        """``ConfigurationError`` in a child forked from the process that made this engine:
        its threads (the recorder's, the heartbeats') stayed in the parent, and its stores'
        SQLite state is the parent's (a run, or the pipeline's registration before it,
        waited for ever)."""
        if self._pid != os.getpid():
            raise ConfigurationError(
                f"this engine was made in process {self._pid}, and this is a child forked from "
                f"it: make an engine in the child (the default one is made afresh), or start "
                f"children with the 'spawn' or 'forkserver' method")

    def run(self, body: Callable[[RunLoop], Any], **kw: Any) -> RunResult:
        """``_run`` (below); a run started on the shared loop's thread (a coroutine that runs
        a pipeline or a DAG synchronously) sends coroutines to loops of their own while it
        goes on (``awaiting.nested_run``): its own would wait for the loop it blocks."""
        self.check_process()
        with nested_run():
            return self._run(body, **kw)

    def _run(self, body: Callable[[RunLoop], Any], *, pipeline: str, params: Mapping[str, Any] | None = None,
            options: RunOptions | None = None, run_id: str | None = None, resume: bool = False,
            source: Mapping[str, Any] | None = None, notifications: Any = None,
            pipeline_version: int | None = None,
            on_start: Callable[[RunLoop], None] | None = None,
            pending: bool = False, claimed: bool = False) -> RunResult:
        """Run ``body`` as run ``run_id`` (new unless ``resume``). ``pending=True`` starts a run
        whose PENDING row already exists (created over REST or by a schedule): it is moved to
        RUNNING instead of being recorded anew. Resuming a run still RUNNING first makes sure
        its driver is gone (``_wait_until_driverless``) unless the caller ``claimed`` it (the
        server's adoption does, with a compare-and-set on the heartbeat)."""
        opt = options or RunOptions()
        self.executor_capacity(opt.max_parallel)
        prior: dict[str, TaskRecord] = {}
        changed = ""
        if not resume:
            run_id = run_id or uuid.uuid4().hex
        # What a resume found before it waited for the lock: a run RUNNING then and ended since
        # (a `runs cancel` at the same time took the lock first) is not driven again.
        before = self.metadata.get_run(run_id) if resume and run_id is not None \
            and self.metadata is not None else None
        took = run_id is not None and self._hold(
            run_id, "not resuming it twice: wait until it ends, or stop it where it runs")
        try:
            epoch, prior, changed = self._claim(
                run_id, claimed, opt,
                before.state if before is not None else None) if resume \
                else (0, prior, changed)
        except BaseException:
            if took:          # (not the lock of a run this engine drives already)
                self._let_go(run_id)
            raise
        assert run_id is not None
        if took:        # its generation in its lock file: proof of its death if it dies
            self._held[run_id].mark(epoch)
        try:
            loop = RunLoop(self, run_id, opt, prior=prior,
                           previous=lambda: self._previous_tasks(pipeline, run_id), epoch=epoch)
            return self._drive(loop, body, pipeline=pipeline, params=params, opt=opt,
                               resume=resume, source=source, notifications=notifications,
                               pipeline_version=pipeline_version, on_start=on_start,
                               pending=pending, prior=prior, changed=changed)
        finally:
            if took:
                self._let_go(run_id)

    def _hold(self, run_id: str, refused: str) -> bool:
        """Take ``run_id``'s driver lock (``driverlock``) for this process (True if this call
        took it), or raise ``ConflictError`` if a live process on this machine holds it."""
        if run_id in self._held or run_id in self.runs:
            raise ConflictError(f"run {run_id} is driven by this process; {refused}")
        if self._driver_locks is None:
            return False
        got = self._driver_locks.take(run_id)
        if isinstance(got, int):
            who = f"process {got}" if got else "another process"
            raise ConflictError(f"run {run_id} is still being driven by {who} on this machine (it "
                                f"holds the run's lock); {refused}")
        if got is None:
            return False
        self._held[run_id] = got
        return True

    def _let_go(self, run_id: str | None) -> None:
        held = self._held.pop(run_id, None) if run_id is not None else None
        if held is not None:
            held.release()
            if time.monotonic() >= self._sweep_due:      # lock files killed drivers left
                self._sweep_due = time.monotonic() + SWEEP_EVERY
                self.sweep_driver_locks()

    def _proven_dead(self, run_id: str) -> bool:
        """Whether the lock this process took for ``run_id`` was left by the run's current
        driver, dead (``DriverLock.orphan``, of the run's ``driver_epoch``): no heartbeat watch
        is needed then."""
        held = self._held.get(run_id)
        return held is not None and self._orphan_of_run(run_id, held.orphan)

    def _orphan_of_run(self, run_id: str, orphan: Any) -> bool:
        """Whether ``orphan`` (a dead driver's (pid, generation), from its lock file) was the
        run's current driver: nobody has claimed the run since (a claim raises the epoch)."""
        if not isinstance(orphan, tuple) or self.metadata is None:
            return False
        current = getattr(self.metadata, "driver_epoch", None)
        try:
            return current is not None and current(run_id) == orphan[1]
        except Exception:  # noqa: BLE001 - cannot tell: the heartbeat decides
            return False

    def orphaned_runs(self) -> list[str]:
        """Runs whose current driver on this machine died holding their lock (kill -9, a
        crash): ``driverlock``. Empty unless the metadata store is a SQLite file."""
        locks = self._driver_locks
        if locks is None:
            return []
        return [r for r in locks.run_ids()
                if r not in self._held and self._orphan_of_run(r, locks.look(r))]

    def sweep_driver_locks(self) -> int:
        """Remove the lock files of runs that have ended (or are gone) whose drivers were
        killed; returns how many. Done by itself once an hour, when a run's lock is let go."""
        if self._driver_locks is None or self.metadata is None:
            return 0
        metadata = self.metadata

        def ended(run_id: str) -> bool:
            rec = metadata.get_run(run_id)
            return rec is None or rec.state.terminal
        with contextlib.suppress(Exception):
            return self._driver_locks.sweep(ended)
        return 0

    def driver_alive(self, run_id: str) -> int | None:
        """The pid of a live process on this machine that drives ``run_id`` (0: its pid is
        not known yet), by its lock; None if none does, or if the store's drivers may be on
        other machines (PostgreSQL: the heartbeat tells)."""
        if run_id in self._held:
            return os.getpid()
        return None if self._driver_locks is None else self._driver_locks.alive(run_id)

    def driver_dead(self, run_id: str) -> bool:
        """Whether the lock of ``run_id`` proves its last driver on this machine died holding
        it (``driverlock``): a resume or ``runs cancel`` then starts at once, without watching
        the heartbeat."""
        if run_id in self._held or self._driver_locks is None:
            return False
        return self._orphan_of_run(run_id, self._driver_locks.look(run_id))

    def _claim(self, run_id: str | None, claimed: bool, opt: RunOptions,
               before: RunState | None = None) -> tuple[int, dict[str, TaskRecord], str]:
        """Resuming ``run_id``: claim it as its new driver; its epoch, its recorded tasks and
        what its options changed."""
        prior: dict[str, TaskRecord] = {}
        changed = ""
        if run_id is None or self.metadata is None:
            raise NotFoundError("resume needs a run id and a metadata store")
        rec = self.metadata.get_run(run_id)
        if rec is None:
            raise NotFoundError(f"run {run_id} not found")
        _check_resumable(rec)
        if claimed and rec.state is not RunState.RUNNING:
            raise ConflictError(f"run {run_id} is {rec.state.value}: it ended since it was "
                                f"claimed for adoption, and is not driven again")
        changed = _changed_options(rec.config, opt)
        seen = rec.heartbeat_at
        if rec.state is RunState.RUNNING and not claimed and not self._proven_dead(run_id):
            self._wait_until_driverless(run_id, seen)
            rec = self.metadata.get_run(run_id) or rec     # it may have ended meanwhile
            _check_resumable(rec)
        if before is RunState.RUNNING and rec.state.terminal:
            raise ConflictError(f"run {run_id} ended meanwhile ({rec.state.value}"
                                f"{': ' + rec.error if rec.error else ''}): not resumed; "
                                f"resume it again to run it on")
        # This driver's generation: its fencing tokens are above every earlier driver's
        # (one still alive after all, stalled past adoption, is fenced off). Claimed with a
        # compare-and-set on the heartbeat read above: of two resumes at once, one drives
        # and the other gets ConflictError (both used to run every remaining task).
        # (``seen``: the heartbeat the wait proved stale, not one read since: a driver that
        # beat again just after the wait is alive after all.)
        # RUNNING in the same step: a resume reading it just after must see a driver
        # (it saw the run ended, skipped the wait, and claimed over this one's heartbeat).
        epoch = self.metadata.claim_driver(run_id, heartbeat=seen, now=self.clock.now(),
                                           running=True, only_running=claimed)
        try:
            self.recorder.revive(run_id)
            prior = {t.node_id: t for t in self.metadata.get_tasks(run_id)}
            self._end_stale_attempts(run_id, prior, epoch)
        except BaseException:
            # Claimed (RUNNING) and not started: the run is given back as it was, else
            # it stayed RUNNING with no driver (a Ctrl-C, a store error here).
            self._unclaim(rec, epoch)
            raise
        return epoch, prior, changed

    def _drive(self, loop: RunLoop, body: Callable[[RunLoop], Any], *, pipeline: str,
               params: Mapping[str, Any] | None, opt: RunOptions, resume: bool,
               source: Mapping[str, Any] | None, notifications: Any,
               pipeline_version: int | None, on_start: Callable[[RunLoop], None] | None,
               pending: bool, prior: dict[str, TaskRecord], changed: str) -> RunResult:
        """Start ``loop`` (claimed already if resumed), run ``body`` and return its result."""
        run_id = loop.run_id
        epoch = loop.epoch
        loop.pipeline = pipeline
        self.runs[run_id] = loop
        _live.add(run_id)
        now = self.clock.now()
        if pending:
            self.recorder.add(RunUpdate(run_id, RunState.RUNNING, now, epoch=epoch))
        elif resume:
            self.recorder.add(RunUpdate(run_id, RunState.RUNNING, now, epoch=epoch))
            self.recorder.add(LogRecord(run_id, now, "info",
                                        f"resumed: {sum(t.state is TaskState.SUCCESS for t in prior.values())}"
                                        f" of {len(prior)} recorded tasks had finished{changed}"))
        else:
            self.recorder.add(RunRecord(run_id, pipeline, RunState.RUNNING, project=self.project,
                                        params=dict(params or {}),
                                        config={"max_parallel": opt.max_parallel,
                                                "error_handler": opt.error_handler,
                                                "timeout": opt.timeout, "no_cache": opt.no_cache},
                                        source=dict(source or {}),
                                        pipeline_version=pipeline_version, created_at=now,
                                        started_at=now, heartbeat_at=now))
        self.emit({"event": "run:status", "run_id": run_id, "pipeline": pipeline,
                   "status": "RUNNING"})
        thread = loop.driver = threading.Thread(target=loop.run_forever,
                                                name=f"twingraph-run-{run_id[:8]}", daemon=True)
        gcpace.run_started()
        try:        # ended however this returns (a Ctrl-C while joining included)
            thread.start()
            value, body_error = None, None
            prev = current_run()
            _current.run = loop
            ident = threading.get_ident()
            loop.body_flag = body_flag = stop.watch_body(ident)    # raised by ``loop._stop``
            # a body going on after a timeout or a cancel gets ``RunStopped`` (``bodystop``)
            loop.body_watch = watch = BodyWatch(ident, sys._getframe())
            if loop.stopping:                 # stopped before the flag was there
                body_flag.request()
                if loop.stopping in HARD_STOPS:
                    watch.stop_later()
            try:
                try:
                    if on_start is not None:  # a failing callback fails the run, like its body
                        on_start(loop)
                    value = body(loop)
                finally:
                    # first: nothing is raised in it after this (one sent as the body returned
                    # may be raised as ``settle`` is called: caught, and settled again)
                    while True:
                        try:
                            watch.settle()
                            break
                        except RunStopped:
                            continue
            except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised via RunResult
                body_error = exc
            finally:
                stop.unwatch_body(ident, body_flag)
                _current.run = prev
                if _is_interrupt(body_error):
                    loop.cancel(_interruption(body_error))      # type: ignore[arg-type]
                loop.body_returned(body_error)
            interrupted = body_error if _is_interrupt(body_error) else None
            while not loop.done.is_set():
                try:
                    loop.done.wait()
                except KeyboardInterrupt as exc:  # Ctrl-C while waiting: cancel, record, re-raise
                    interrupted = interrupted or exc
                    loop.cancel(_interruption(exc))
            driver = loop.driver       # the thread that ended it (a long inline call moves it)
            if driver is not None and driver is not threading.current_thread():
                driver.join()
            try:
                loop.wait_for_error_handlers(HANDLER_WAIT)
            except KeyboardInterrupt as exc:  # Ctrl-C: stop waiting for them; the end is recorded
                interrupted = interrupted or exc
            # The writer's final flush allocates too: the run's GC pacing lasts through it.
            result = self._finish(loop, pipeline, value, body_error, notifications)
        finally:
            gcpace.run_ended()
        if interrupted is not None:      # of its kind: a command tells SIGTERM from Ctrl-C
            how = str(interrupted) or "interrupted"
            raise type(interrupted)(f"run {run_id} {how}; it ended {result.state.value}")
        return result

    def _finish(self, loop: RunLoop, pipeline: str, value: Any, body_error: BaseException | None,
                notifications: Any) -> RunResult:
        run_id = loop.run_id
        error: BaseException | None = None
        if loop.stopping == "timeout":
            error = PipelineTimeout(loop.stop_message, run_id=run_id)
        elif loop.stopping == "cancelled":
            error = PipelineCancelled(f"run cancelled: {loop.stop_message}", run_id=run_id)
        elif body_error is not None and not isinstance(body_error, TwinGraphError):
            error = body_error
        unobserved = {n: e for n, e in loop.failures.items()
                      if not (loop.tasks[n].observed if n in loop.tasks
                              else n in loop.observed_failures)}
        if error is None and (unobserved or loop.stopping == "failed" or body_error is not None):
            failures = unobserved or loop.failures
            msg = "; ".join(f"{n}: {e}" for n, e in list(failures.items())[:5]) or (
                str(body_error) if body_error is not None else loop.stop_message)
            error = PipelineFailed(f"pipeline {pipeline!r} failed: {msg}", run_id=run_id,
                                   failures=loop.failures)
            if body_error is not None:
                error.__cause__ = body_error
        if error is None:
            try:
                value = substitute(value, lambda r: r.result())
            except BaseException as exc:  # noqa: BLE001
                error = exc
        state = (RunState.CANCELLED if loop.stopping == "cancelled"
                 else RunState.FAILED if error is not None else RunState.SUCCESS)
        self.recorder.add(RunUpdate(run_id, state, self.clock.now(),
                                    error=None if error is None else error_text(error),
                                    epoch=loop.epoch))
        try:
            self.recorder.flush(run_id)
        except Exception as exc:  # noqa: BLE001 - records of this run were lost: it failed
            # Its rows may say anything (a task SUCCESS whose result was not written): the
            # run is FAILED with the write's error, in the store too if it can still be told.
            error, state = exc, RunState.FAILED
            self.recorder.add(RunUpdate(run_id, state, self.clock.now(),
                                        error=error_text(exc), epoch=loop.epoch))
            try:
                self.recorder.flush(run_id)
            except Exception as again:  # noqa: BLE001 - the store is unusable: the result says so
                log.warning("run %s: its final state could not be recorded: %s", run_id,
                            error_text(again), exc_info=log.isEnabledFor(logging.DEBUG))
            else:
                if loop.taken_over is None:     # a driver taken over from writes nothing
                    self._end_open_rows(run_id, loop.epoch, exc)
        finally:
            self.runs.pop(run_id, None)
            _live.discard(run_id)
            self._let_go(run_id)          # its end is written (or cannot be): not driven now
        progress = loop.progress()
        self.emit({"event": "run:status", "run_id": run_id, "pipeline": pipeline,
                   "status": state.value, "progress": progress})
        result = RunResult(run_id, state, value if error is None else None, error, progress,
                           dict(loop.failures))
        if notifications and loop.taken_over is None:   # else its new driver tells its end
            notify(notifications, wait=True, summary={"run_id": run_id, "pipeline": pipeline, "status": state.value,
                                   "error": None if error is None else message_of(error),
                                   "failures": dict(loop.failures), "progress": progress},
                   report=lambda message: self.recorder.add(
                       LogRecord(run_id, self.clock.now(), "warning", message)))
        return result

    def cancel(self, run_id: str, reason: str = "cancelled by user") -> bool:
        loop = self.runs.get(run_id)
        if loop is None:
            return False
        loop.cancel(reason)
        return True

    def executor_capacity(self, n: int) -> None:
        setcap = getattr(self.executor, "set_thread_capacity", None)
        if setcap is not None:
            setcap(n)

    def _unclaim(self, rec: RunRecord, epoch: int) -> None:
        """A resume that claimed ``rec``'s run and failed before starting it: the run's state
        as it was (an ended run ended again, with its error; a RUNNING one left to the wait
        for its driver), best effort."""
        if rec.state is RunState.RUNNING or self.metadata is None:
            return
        try:
            self.metadata.write([RunUpdate(rec.run_id, rec.state, self.clock.now(),
                                           error=rec.error, epoch=epoch)])
        except Exception:  # noqa: BLE001 - the store refuses: the resume's own error says why
            log.warning("run %s: its state could not be restored after a failed resume",
                        rec.run_id, exc_info=True)

    def _end_open_rows(self, run_id: str, epoch: int, exc: BaseException) -> None:
        """The run ended FAILED because a batch of its records was lost: the recorder writes
        none of its task-level records after that (``Recorder._without_doomed``), so the tasks
        and attempts whose rows said RUNNING (or QUEUED...) stayed so under an ended run, for
        good (``runs cancel`` refuses an ended run). They are ended here, written directly:
        tasks CANCELLED, attempts FAILED, with the loss's error. Best effort: a store that
        still refuses is left as it is (a resume ends them too)."""
        md = self.metadata
        if md is None:
            return
        why = f"not finished: the run's records could not be written ({error_text(exc)})"
        now = self.clock.now()
        try:
            if md.driver_epoch(run_id) != epoch:
                return              # another driver took the run over: its rows are its own
            # Only rows of this driver's epoch or an earlier one (a resume whose first batch
            # was lost left the earlier driver's open too); a later driver's are not ours.
            batch: list[Any] = [
                TaskUpdate(run_id, t.node_id, TaskState.CANCELLED, now, fence=t.fence,
                           error=why)
                for t in md.get_tasks(run_id)
                if not t.state.terminal and fence_epoch(t.fence or 0) <= epoch]
            get_attempts = getattr(md, "get_attempts", None)
            if get_attempts is not None:
                batch += [AttemptRecord(run_id, a.node_id, a.attempt, a.fence, TaskState.FAILED,
                                        a.executor, a.started_at, now, why)
                          for a in get_attempts(run_id)
                          if a.state is TaskState.RUNNING and fence_epoch(a.fence) <= epoch]
            if batch:
                md.write(batch)
        except Exception as exc:  # noqa: BLE001 - the store still refuses: the run's error says why
            # one line (its traceback with debug logging), as the recorder's own: a full disk
            # printed ~60 lines of chained tracebacks here
            log.warning("run %s: its unfinished task rows could not be ended: %s", run_id,
                        error_text(exc), exc_info=log.isEnabledFor(logging.DEBUG))

    def _end_stale_attempts(self, run_id: str, prior: Mapping[str, TaskRecord], epoch: int,
                            why: str = "the run was resumed by another driver") -> None:
        """Attempts an earlier driver left RUNNING (it stopped with them: a crash, a kill)
        end FAILED, so no attempt of the run stays RUNNING for ever; the tasks themselves run
        again under this driver, as attempts numbered after these. Each ending carries this
        driver's fence: a late row of the earlier driver's attempt (it was only stalled) is
        dropped by the store, as its task rows are."""
        get_attempts = getattr(self.metadata, "get_attempts", None)
        if get_attempts is None or not any(t.state is TaskState.RUNNING for t in prior.values()):
            return
        now = self.clock.now()
        for a in get_attempts(run_id):
            if a.state is TaskState.RUNNING:
                self.recorder.add(AttemptRecord(
                    run_id, a.node_id, a.attempt, max(a.fence, fence_token(epoch, 0)),
                    TaskState.FAILED, a.executor,
                    a.started_at, now, f"its driver stopped before it ended; {why}"))

    def end_driverless(self, run_id: str, reason: str = "cancelled: its driver was gone"
                       ) -> RunState:
        """End a RUNNING run whose driver is gone (killed, crashed) without finishing it: the
        run and its unfinished tasks become CANCELLED, its attempts left RUNNING FAILED. For a
        run nobody will resume (a DAG run, or one given up). ``ConflictError`` if the run has
        ended, or if its driver is alive (its heartbeat moves within ``LIVE_WINDOW``: watched
        that long at most). The run is claimed first (``claim_driver``, compare-and-set on the
        heartbeat), so a driver that was only stalled is fenced off and a resume at the same
        moment wins or loses whole."""
        if self.metadata is None:
            raise NotFoundError("ending a run needs a metadata store")
        if run_id in self.runs:
            raise ConflictError(f"run {run_id} is driven by this process: cancel it instead")
        rec = self.metadata.get_run(run_id)
        if rec is None:
            raise NotFoundError(f"run {run_id} not found")
        if rec.state is not RunState.RUNNING:
            raise ConflictError(f"run {run_id} is {rec.state.value}: only a RUNNING run whose "
                                f"driver is gone can be ended this way")
        seen = rec.heartbeat_at
        refused = ("only a run whose driver is gone can be ended this way: stop it where it "
                   "runs (Ctrl-C there), or through the server that drives it")
        took = self._hold(run_id, refused)
        try:
            return self._end_driverless(run_id, rec, seen, reason, refused)
        finally:
            if took:
                self._let_go(run_id)

    def _end_driverless(self, run_id: str, rec: RunRecord, seen: float | None, reason: str,
                        refused: str) -> RunState:
        assert self.metadata is not None
        if not self._proven_dead(run_id):
            self._wait_until_driverless(run_id, seen, f"its driver is alive, and {refused}")
        rec = self.metadata.get_run(run_id) or rec
        if rec.state is not RunState.RUNNING:
            raise ConflictError(f"run {run_id} ended meanwhile ({rec.state.value})")
        now = self.clock.now()
        epoch = self.metadata.claim_driver(run_id, heartbeat=seen, now=now)
        tasks = {t.node_id: t for t in self.metadata.get_tasks(run_id)}
        self._end_stale_attempts(run_id, tasks, epoch, f"the run was ended ({reason})")
        fence = fence_token(epoch, 0)
        for t in tasks.values():
            if not t.state.terminal:
                self.recorder.add(TaskUpdate(run_id, t.node_id, TaskState.CANCELLED, now,
                                             fence=max(fence, t.fence or 0), error=reason))
        self.recorder.add(RunUpdate(run_id, RunState.CANCELLED, now, error=reason, epoch=epoch))
        self.recorder.flush(run_id)
        return RunState.CANCELLED

    def _wait_until_driverless(self, run_id: str, seen: float | None,
                               refused: str = "not resuming it twice: wait until it ends, or "
                                              "stop it where it runs") -> None:
        """A RUNNING run's driver writes a heartbeat every ``HEARTBEAT_INTERVAL`` seconds. Watch
        the run until its last heartbeat is ``LIVE_WINDOW`` old (at once if it already is): a
        new heartbeat means a live driver (``ConflictError``: two drivers would run the same
        tasks twice); none means it died (e.g. kill -9)."""
        assert self.metadata is not None
        if seen is None:
            return
        # Watched for what is left of the window by the recorded time, and never longer than
        # the window itself by this process's own clock: a heartbeat stamped ahead of it (a
        # driver host whose clock runs fast) was watched for ever.
        watch = driver_watch(seen, self.clock.now())
        until = time.monotonic() + watch
        while time.monotonic() < until:
            time.sleep(0.25)
            rec = self.metadata.get_run(run_id)
            if rec is None or rec.state is not RunState.RUNNING:
                return           # ended meanwhile: the caller checks the state again
            if rec.heartbeat_at != seen:
                raise ConflictError(
                    f"run {run_id} is still being driven (its heartbeat moved while we "
                    f"watched); {refused}")

    def _previous_tasks(self, pipeline: str, run_id: str) -> Mapping[str, TaskRecord]:
        """The tasks of the pipeline's last run, by node id, that a miss's reason compares
        with (loaded on the first miss). A last run of more than ``PREVIOUS_MAX`` tasks is not
        loaded (``TooLarge``): one of 780,000 took 25 s and ~1 GB on the run's loop before
        its first task started."""
        if self.metadata is None:
            return {}
        # The newest run that has ended: one still going (another process's, at the same
        # time) has not stored what it will, and its half-done rows made 7,983 misses read
        # "new task" or "it was RUNNING in the last run".
        for rec in self.metadata.list_runs(pipeline=pipeline, limit=PREVIOUS_RUNS_LOOKED_AT):
            if rec.run_id != run_id and rec.state.terminal:
                get_tasks: Any = self.metadata.get_tasks
                try:
                    if get_tasks(rec.run_id, limit=1, offset=PREVIOUS_MAX):
                        return TooLarge()
                except TypeError:       # a store without paging: loaded whole
                    pass
                return {t.node_id: t for t in get_tasks(rec.run_id)}
        return {}

    def _on_stored(self, tokens: list[Any]) -> None:
        """Writer thread: results of these (loop, task) pairs are durable; tell their loops."""
        if not tokens:
            return
        first = tokens[0][0]
        if len(set(map(id, map(_FIRST, tokens)))) == 1:      # one run's batch: no grouping
            first.inbox.put(("stored", list(map(_SECOND, tokens))))
            return
        by_loop: dict[int, tuple[RunLoop, list[Any]]] = {}
        for loop, task in tokens:
            by_loop.setdefault(id(loop), (loop, []))[1].append(task)
        for loop, tasks in by_loop.values():
            loop.inbox.put(("stored", tasks))

    def _on_lost(self, run_id: str, exc: BaseException) -> None:
        """Writer thread: a batch of ``run_id``'s records was given up. The run stops now, as
        a failure: what it would still do is recorded nowhere (it went on to its end, every
        task running, and failed only then)."""
        loop = self.runs.get(run_id)
        if loop is not None:
            loop.inbox.put(("lost", exc))

    def _taken_over(self, run_id: str, own: int, now: int) -> None:
        """Another driver claimed ``run_id`` from this one (driver epoch ``own`` -> ``now``):
        this process was stopped or stalled for longer than ``LIVE_WINDOW`` and ``run
        --resume`` took the run over. Stop it here; the run is the other driver's now (its
        rows from here are fenced off anyway), and finishing it here ran its tasks twice."""
        loop = self.runs.get(run_id)
        if loop is None or loop.epoch != own or loop.taken_over is not None:
            return
        loop.taken_over = now
        loop.cancel(taken_over_message(own, now))

    def _on_stale(self, stale: list[tuple[str, str]]) -> None:
        for run_id, node_id in stale:
            self.emit({"event": "log", "run_id": run_id, "node_id": node_id, "level": "warning",
                       "message": "a stale attempt's result was rejected by its fence"})

    def took_in(self, tasks: int) -> None:
        """A run that took in ``tasks`` tasks has ended (counted towards ``offload_after``)."""
        with self._taken_lock:
            self.tasks_taken += tasks

    def close(self) -> None:
        """Cancel the runs still going (each records its end, for up to ``CLOSE_WAIT``
        seconds), then close the recorder and the executors. Closed mid-run, a run waited for
        ever for a recorder that was gone."""
        active = list(self.runs.items())
        for _, loop in active:
            loop.cancel("the engine was closed")
            loop.handlers_cut.set()      # its end does not wait for error handlers either
        deadline = time.monotonic() + CLOSE_WAIT
        # until each has recorded its end (``_finish`` takes it off ``runs`` after its flush)
        while any(self.runs.get(run_id) is loop for run_id, loop in active) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        self.recorder.close()
        self.heartbeats.close()
        for ex in self.executors.values():
            ex.shutdown()
        if isinstance(self.results, AsyncStoreAdapter):
            self.results.close()


#: Seconds ``Engine.close`` gives runs it cancels to record their end.
CLOSE_WAIT = 5.0

#: A heartbeat older than this (seconds) means the run's driver is gone: heartbeats come every
#: ``HEARTBEAT_INTERVAL`` (5 s), written apart from the run's records (engine/heartbeats.py).
LIVE_WINDOW = 2 * HEARTBEAT_INTERVAL + 1.0
#: The least a stale heartbeat is watched before its driver is taken for gone. A live driver
#: cut off from the metadata database goes on running; its beats are written again within an
#: interval once the database is back. One stale reading right then was taken for a dead
#: driver, and two drivers ran the same tasks (a PostgreSQL outage, session 30 review).
MIN_WATCH = HEARTBEAT_INTERVAL + 2.0
#: How often (seconds) an engine sweeps the lock files of ended runs (``sweep_driver_locks``).
SWEEP_EVERY = 3600.0


def driver_watch(heartbeat_at: float | None, now: float) -> float:
    """How long a resume or a ``runs cancel`` watches a RUNNING run whose last heartbeat was
    at ``heartbeat_at`` before it takes its driver for gone: what is left of ``LIVE_WINDOW``,
    and never less than ``MIN_WATCH`` (0 for a run that never beat)."""
    if heartbeat_at is None:
        return 0.0
    return max(MIN_WATCH, min(LIVE_WINDOW, LIVE_WINDOW - (now - heartbeat_at)))

_NOT_STREAMS = (str, bytes, bytearray, memoryview, list, tuple, dict, int, float, bool,
                type(None))


def collect(value: Any) -> Any:
    """A result that is a lazy stream — a generator, ``map``, ``zip``, any iterator — as the
    list of its items (a task's result is stored whole, and a stream cannot be); a coroutine
    (an ``async def`` component's call) as what it returns, awaited here."""
    t = type(value)
    if t is CoroutineType:
        return collect(run_awaitable(value))
    if t is AsyncGeneratorType:      # an ``async def`` component that yields
        return run_awaitable(_items_of(value))
    if t is GeneratorType or (t not in _NOT_STREAMS and isinstance(value, Iterator)):
        return list(value)
    return value


async def _items_of(agen: Any) -> list[Any]:
    return [x async for x in agen]


def normalize(value: Any) -> Any:
    """The documented result shape: NamedTuple -> dict of fields, dict as is, else {'result': v}.
    A generator's items are collected into a list (a task's result is stored whole); an
    ``async def`` component's coroutine is awaited first."""
    if type(value) is CoroutineType:
        value = run_awaitable(value)
    if isinstance(value, dict):
        return value
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return dict(value._asdict())
    return {"result": collect(value)}


def _config_digest(config: Any) -> str:
    """A short digest of a component's config for its task rows (what ``_miss_reason``
    compares): of its canonical JSON, in no order, as the key prefix reads it (a config that
    is not JSON: by content, as the key reads it too)."""
    try:
        return sha256_hex(canonical_json(config))[:16]
    except (TypeError, ValueError):
        pass
    try:
        return sha256_hex(canonical_json(config_digest(config, Engine.hash_value)))[:16]
    except Exception:  # noqa: BLE001 - a value that cannot be encoded: as it reads
        return sha256_hex(canonical_json(_jsonable(config)))[:16]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


#: The largest pickle of an argument value whose objects are numbered in the call's walk
#: (``pickle_ids``): a deque of a million lists took 3.7 s to key instead of 0.4 s.
PICKLE_IDS_MAX = 256 * 1024


def _changed_options(config: Mapping[str, Any], opt: RunOptions) -> str:
    """The run options a resume uses that differ from those the run was recorded with, as a
    log line's tail (the run's ``config`` keeps the first driver's; the log says what the
    resume changed, e.g. ``--no-cache``)."""
    now = {"max_parallel": opt.max_parallel, "error_handler": opt.error_handler,
           "timeout": opt.timeout, "no_cache": opt.no_cache}
    diff = [f"{k}={v!r}" for k, v in now.items() if k in config and config[k] != v]
    return f"; this resume runs with {', '.join(diff)}" if diff else ""


def _check_resumable(rec: Any) -> None:
    """A run ``resume`` may drive on: one that has not ended, or ended without succeeding.
    ``ConflictError`` otherwise, in words (a resume that waited for a live driver, whose run
    then ended, said "invalid run transition SUCCESS -> RUNNING")."""
    try:
        transition_run(rec.state, RunState.RUNNING)
    except InvalidTransition:
        if rec.state is RunState.SUCCESS:
            raise ConflictError(f"run {rec.run_id} already finished successfully: there is "
                                f"nothing to resume") from None
        raise ConflictError(f"run {rec.run_id} is {rec.state.value}: it cannot be "
                            f"resumed") from None
