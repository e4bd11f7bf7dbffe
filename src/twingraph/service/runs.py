"""Runs driven by the server: created PENDING, started on the shared engine, cancelled.

A run is one execution of a pipeline's current version with params (DESIGN.md §1). ``create``
writes a PENDING row after checking that the pipeline can run with those params; ``start`` moves
it to RUNNING with a compare-and-set (a second start gets ``ConflictError``) and drives the
engine on a thread of its own; ``cancel`` cancels a PENDING run in the store, or reaches the
running tasks through the engine. Both faces (Tauro runs, TwinGraph executions) and schedules
use this one service.
"""

from __future__ import annotations

import dataclasses

import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twingraph.core.records import LogRecord
from twingraph.core.states import RunState
from twingraph.dsl.component import check_platform
from twingraph.dsl.params import as_given, json_fits, param_json_types, typed_params
from twingraph.dsl.pipeline import Pipeline, export_lineage, recorded_defaults
from twingraph.engine.bodystop import passes_through
from twingraph.engine.dynamic import DynamicScheduler
from twingraph.engine.engine import LIVE_WINDOW, Engine, RunResult
from twingraph.engine.loop import RunOptions
from twingraph.errors import (
    ConflictError,
    NotFoundError,
    SchedulingError,
    TwinGraphError,
    ValidationError,
)
from twingraph.service.definitions import (
    DefinitionError,
    check_calls,
    check_python_params,
    is_python,
    normalize_graph,
    to_dag,
)
from twingraph.stores.metadata.catalog import PipelineRecord
from twingraph.stores.metadata.catalog_store import RunRow, SQLCatalog, StatusReader

log = logging.getLogger("twingraph.runs")

DEFAULT_TIMEOUT = 3600.0
#: Finished runs' results a ``RunService`` holds in memory (the newest; older ones are dropped).
MAX_RESULTS = 1000


class RunService:
    def __init__(self, engine: Engine, catalog: SQLCatalog, scheduler: DynamicScheduler) -> None:
        self.engine, self.catalog, self.scheduler = engine, catalog, scheduler
        self.loaded: dict[str, Pipeline] = {}          # "module:qualname" -> loaded @pipeline
        self._threads: dict[str, threading.Thread] = {}     # started drivers only
        self._starting: set[str] = set()     # start() is between its claim and its driver
        # The newest ``max_results`` results of runs this process drove (a Python pipeline's
        # return value is its execution's ``outputs`` while held: service/workflows.py).
        self._results: OrderedDict[str, RunResult] = OrderedDict()
        self.max_results = MAX_RESULTS
        self._lock = threading.Lock()
        self.on_finished: list[Callable[[str, RunResult], None]] = []

    # -- pipelines --------------------------------------------------------------------------
    def register_python(self, pipe: Pipeline) -> str:
        """Record a loaded ``@pipeline`` in the catalog; returns its pipeline id."""
        self.loaded[f"{pipe.fn.__module__}:{pipe.fn.__qualname__}"] = pipe
        pipe.register(self.engine)
        rec = self.engine.metadata.get_pipeline(self.engine.project, pipe.name)  # type: ignore[union-attr]
        assert rec is not None
        return str(rec.id)

    def known_operation(self, name: str) -> bool:
        return self.scheduler.executor.resolve(name) is not None

    def normalize(self, definition: Any) -> dict[str, Any]:
        graph = normalize_graph(definition, self.known_operation)
        check_calls(graph, self.scheduler.executor)
        return graph

    def _python_pipeline(self, pipeline: PipelineRecord) -> Pipeline:
        d = pipeline.definition
        pipe = self.loaded.get(f"{d.get('module')}:{d.get('qualname')}")
        if pipe is None:
            raise DefinitionError(
                f"pipeline {pipeline.name!r} is Python code that this server has not loaded "
                f"(start it with --load {d.get('module')})",
                [{"field": "pipeline_id", "message": "pipeline code not loaded on this server"}])
        return pipe

    def check(self, pipeline: PipelineRecord, params: Mapping[str, Any]) -> None:
        """Raise ``DefinitionError`` if ``pipeline`` cannot run here with ``params``."""
        try:
            if is_python(pipeline.definition):
                pipe = self._python_pipeline(pipeline)
                check_python_params(pipe.fn, call_params(pipe.fn, params))
                check_platform(self.engine, pipe.components())
            else:
                graph = self.normalize(pipeline.definition)
                # Planned as ``start`` plans it: a component for a platform with no executor
                # here (or asking for more than this machine has) is refused now, as for
                # Python pipelines, not by every start of the run.
                self.scheduler.plan(to_dag("check", graph, params, self.scheduler.executor))
        except SchedulingError as exc:     # ExecutorUnavailable, ResourceUnavailable
            if isinstance(exc, ValidationError):
                raise
            raise DefinitionError(str(exc), [{"field": "pipeline_id", "message": str(exc)}]) \
                from exc

    # -- lifecycle ------------------------------------------------------------------------------
    def create(self, pipeline: PipelineRecord, *, params: Mapping[str, Any] | None = None,
               tags: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
               schedule_id: str | None = None) -> RunRow:
        params = dict(params or {})
        config = dict(config or {})
        _check_config(config)
        self.check(pipeline, params)
        source: dict[str, Any] = {}
        if is_python(pipeline.definition):
            fn = self._python_pipeline(pipeline).fn
            # a float's int as a float, a Path's or a date's text (its names: every start of
            # the run builds them), as ``twingraph run`` records them (``dsl.params``)
            params, typed = as_given(fn, params)
            if typed:
                source["typed_params"] = typed
            # Recorded with the defaults it will run with (as ``twingraph run`` records them):
            # a run adopted after the pipeline's default was edited keeps its own.
            params.update(_defaults_to_record(fn, params))
        return self.catalog.create_run(pipeline, params=params, tags=dict(tags or {}),
                                       config=config, schedule_id=schedule_id, source=source)

    def start(self, run_id: str, *, timeout_seconds: float | None = None,
              claimed: bool = False) -> RunRow:
        """Start a PENDING run. ``claimed=True``: the caller (the schedule firer) has already
        moved it to RUNNING with its own compare-and-set; only drive it.

        A start that fails before its driver thread takes over raises, and the run is left:
        PENDING and unchanged on bad input or a refused start (a ``TwinGraphError``), except
        that a pipeline that no longer plans fails it; FAILED on any other error (a bug, an
        unexpected failure), with the error's type recorded; FAILED whenever it was RUNNING
        for this start (claimed), since no driver would ever end it."""
        run = self.catalog.get_run(run_id)
        expected = RunState.RUNNING if claimed else RunState.PENDING
        if run.state is not expected:
            raise ConflictError(f"run {run_id} is {run.state.value}; only a PENDING run can start")
        if run.pipeline_id is None:
            raise ValidationError(f"run {run_id} has no pipeline to run")
        # From here until its driver thread runs, a cancel that finds the run RUNNING (the
        # firer's claim, or ours below) waits for the driver instead of taking the run for
        # another process's (``cancel``).
        with self._lock:
            self._starting.add(run_id)
        running = claimed        # the run is RUNNING on this start's behalf, with no driver yet
        ended = False            # this start has ended the run already
        try:
            pipeline = self._as_run(self.catalog.get_pipeline(run.pipeline_id), run)
            config = dict(run.config)
            if timeout_seconds is not None:
                config["timeout"] = float(timeout_seconds)
            _check_config(config)
            try:
                launch = self._prepare(pipeline, run, config)
            except TwinGraphError as exc:      # the pipeline changed since the run was created
                ended = True
                self._fail_start(run, running, f"{type(exc).__name__}: {exc}")
                raise
            if not claimed and not self.catalog.claim_start(run_id, self.engine.clock.now()):
                raise ConflictError(f"run {run_id} was started or cancelled by someone else")
            running = True
            try:
                self._spawn(run_id, launch, "serve")
            except BaseException as exc:
                # RUNNING with no driver would stay so for ever (adoption skips a run this
                # process lists as its own, and a cancel finds nothing to cancel): end it.
                ended = True
                self._fail_start(run, True, f"run failed to start: {type(exc).__name__}: {exc}")
                raise
        except TwinGraphError as exc:
            # Bad input or a refused start (a missing pipeline, a bad timeout, a lost claim)
            # leaves a PENDING run as it was. A run claimed for this start has no driver and
            # nobody else will end it: it ends here.
            if running and not ended:
                self._fail_start(run, True, f"{type(exc).__name__}: {exc}")
            raise
        except BaseException as exc:
            # Not bad input: a bug or an unexpected failure while the start was prepared (in
            # the pipeline's code, the planning, a store call). Left PENDING, or RUNNING with
            # no driver, the run would never end; it ends FAILED and the error goes on to the
            # caller (REST: INTERNAL_ERROR; the schedule firer logs it). Its text may name
            # paths, hosts or values, so the run records only its type: the caller logs the
            # rest. A failed ``claim_start`` may have been applied all the same: the
            # compare-and-set of ``fail_pending`` leaves such a run to adoption.
            if not ended:
                log.warning("run %s could not start (%s); it is FAILED", run_id,
                            type(exc).__name__)
                self._fail_start(run, running, unexpected_start_error(exc))
            raise
        finally:
            with self._lock:
                self._starting.discard(run_id)
        return self.catalog.get_run(run_id)

    def _fail_start(self, run: RunRow, running: bool, error: str) -> None:
        """End ``run``, which ``start`` could not hand to a driver: RUNNING -> FAILED when
        ``running`` (claimed for this start), else PENDING -> FAILED (a compare-and-set: a run
        that someone else has meanwhile started or cancelled is left alone). Then its log and
        a ``run:status`` event say so, as the engine says it of the runs it ends (WebSocket
        subscribers, metrics, waiters). Never raises: the caller re-raises the error that
        stopped the start, which a second failure (the store's) must not replace."""
        try:
            if running:
                if not self.catalog.finish_running(run.run_id, RunState.FAILED, error,
                                                   self.engine.clock.now()):
                    return            # someone else ended it (and said so)
            elif not self.catalog.fail_pending(run.run_id, error):
                return
        except Exception:  # noqa: BLE001 - see the docstring
            log.warning("run %s: its failed start could not be recorded", run.run_id,
                        exc_info=True)
            return
        try:
            # Written now, alone: through the recorder it waited for every other run's
            # backlog, inside the REST request that started this one.
            if self.engine.metadata is not None:
                self.engine.metadata.write([LogRecord(run.run_id, time.time(), "error", error)])
        except Exception:  # noqa: BLE001 - the run's state is recorded; its log line is not
            log.warning("run %s: the log of its failed start could not be written",
                        run.run_id, exc_info=True)
        self.engine.emit({"event": "run:status", "run_id": run.run_id,
                          "pipeline": run.pipeline, "status": RunState.FAILED.value,
                          "error": error})

    def _spawn(self, run_id: str, launch: Callable[[], RunResult], kind: str) -> None:
        """Start the driver thread; registered and started under the lock, so ``_threads``
        never holds a thread that cannot be joined yet."""
        thread = threading.Thread(target=self._drive, args=(run_id, launch, kind == "adopt"),
                                  daemon=True,
                                  name=f"twingraph-{kind}-{run_id[-8:]}")
        with self._lock:
            self._threads[run_id] = thread
            try:
                thread.start()
            except BaseException:
                del self._threads[run_id]     # never started: nothing to join or wait for
                raise

    def resume(self, run_id: str) -> None:
        """Drive a RUNNING run whose driver died (adopted: see ``service.adoption``): results
        it stored are reused, the rest runs again (at-least-once, exactly-once recorded)."""
        run = self.catalog.get_run(run_id)
        if run.pipeline_id is None:
            raise ValidationError(f"run {run_id} has no pipeline to run")
        pipeline = self._as_run(self.catalog.get_pipeline(run.pipeline_id), run)
        launch = self._prepare(pipeline, run, dict(run.config), resume=True)
        self._spawn(run_id, launch, "adopt")

    def _as_run(self, pipeline: PipelineRecord, run: RunRow) -> PipelineRecord:
        """``pipeline`` as the version ``run`` was made with, when that version is a graph:
        a graph edited since (a new version) ran its new nodes and configs when adopted, the
        finished ones again too, and a run started after the edit ran the new graph under the
        old version's number. A Python version is the code this server loaded (what it can
        run: its definition names a module, not code). ``NotFoundError`` if the run's
        version is not recorded."""
        if run.pipeline_version is None or run.pipeline_version == pipeline.current_version:
            return pipeline
        for v in self.catalog.pipeline_versions(pipeline.id):
            if v.version == run.pipeline_version:
                if is_python(v.definition):
                    return pipeline
                return dataclasses.replace(pipeline, definition=v.definition,
                                           current_version=v.version)
        raise NotFoundError(f"run {run.run_id}'s pipeline version {run.pipeline_version} "
                            f"of {pipeline.name!r} is not recorded")

    def can_drive(self, run: RunRow) -> bool:
        """Whether this process has the code to run ``run``'s pipeline."""
        if run.pipeline_id is None:
            return False
        try:
            pipeline = self._as_run(self.catalog.get_pipeline(run.pipeline_id), run)
            if is_python(pipeline.definition):
                self._python_pipeline(pipeline)
            else:
                # Every component/operation of the graph known here: else another server
                # (that loaded them) must adopt it, not this one fail it.
                normalize_graph(pipeline.definition, self.known_operation)
            return True
        except TwinGraphError:
            return False

    def _prepare(self, pipeline: PipelineRecord, run: RunRow,
                 config: Mapping[str, Any], *, resume: bool = False) -> Callable[[], RunResult]:
        """Everything that can fail on bad input, done before the run leaves PENDING."""
        # A resume here is an adoption: the adopter claimed the run by compare-and-set.
        mode: dict[str, Any] = {"resume": True, "claimed": True} if resume else {"pending": True}
        timeout = float(config.get("timeout") or DEFAULT_TIMEOUT)
        no_cache = bool(config.get("no_cache", False))
        if is_python(pipeline.definition):
            pipe = self._python_pipeline(pipeline)
            # the values recorded as text (a Path, a date), whoever started the run
            typed = list((run.source or {}).get("typed_params") or ())
            inexact = (run.source or {}).get("inexact_params")
            if inexact:
                raise DefinitionError(
                    f"run {run.run_id} was started with parameters its record does not hold "
                    f"exactly ({', '.join(inexact)}): it can only be resumed where they are "
                    f"given again (twingraph run --resume {run.run_id} --param ...)",
                    [{"field": f"params.{n}", "message": "not recorded exactly"} for n in inexact])
            check_python_params(pipe.fn, call_params(pipe.fn, run.params), typed)
            check_platform(self.engine, pipe.components())
            spec = pipe.spec
            opts = RunOptions(max_parallel=int(config.get("max_parallel") or spec.max_parallel),
                              error_handler=spec.error_handler,
                              timeout=min(timeout, spec.timeout) if "timeout" in config else spec.timeout,
                              no_cache=no_cache, error_config=spec.error_config,
                              lineage=spec.lineage)
            params = dict(run.params)
            kwargs = typed_params(pipe.fn, call_params(pipe.fn, params), typed)
            source = pipe.source()
            if typed:                      # (a run's source is written when the engine makes it)
                source["typed_params"] = typed

            @passes_through
            def call_body(_run: Any) -> Any:
                return pipe.fn(**kwargs)

            def launch() -> RunResult:
                result = self.engine.run(
                    call_body, pipeline=run.pipeline, params=params,
                    options=opts, run_id=run.run_id, source=source, **mode,
                    notifications=spec.notifications or None,
                    pipeline_version=run.pipeline_version)
                export_lineage(self.engine, spec, run.run_id)    # never raises
                return result
            return launch
        graph = self.normalize(pipeline.definition)
        dag = to_dag(run.run_id, graph, run.params, self.scheduler.executor)
        plan = self.scheduler.plan(dag)
        opts = RunOptions(max_parallel=int(config.get("max_parallel") or 10),
                          error_handler=str(config.get("error_handler") or "fail"),
                          timeout=timeout, no_cache=no_cache)
        body = self.scheduler.body(dag, plan)
        return lambda: self.engine.run(
            body, pipeline=run.pipeline, params=dict(run.params), options=opts,
            run_id=run.run_id, pipeline_version=run.pipeline_version, **mode,
            source={"kind": "pipeline", "pipeline_id": pipeline.id})

    def _drive(self, run_id: str, launch: Callable[[], RunResult], adopting: bool = False
               ) -> None:
        try:
            result = launch()
        except ConflictError as exc:
            # Another process has it (a resume or a `runs cancel` on this machine took its
            # lock first, or it ended meanwhile): not this driver's to fail. Still RUNNING and
            # driven by nobody in the end, a server adopts it once its heartbeat is stale.
            log.warning("run %s was not %s: %s", run_id,
                        "adopted" if adopting else "started here", exc)
            with self._lock:
                self._threads.pop(run_id, None)
            return
        except BaseException as exc:  # noqa: BLE001 - the run must end recorded, whatever happened
            result = self._failed_start(run_id, exc)
        with self._lock:
            self._threads.pop(run_id, None)
            self._results[run_id] = result
            while len(self._results) > self.max_results:
                self._results.popitem(last=False)
        for cb in list(self.on_finished):
            try:
                cb(run_id, result)
            except Exception:  # noqa: BLE001 - a listener must not break the driver
                pass

    def _failed_start(self, run_id: str, exc: BaseException) -> RunResult:
        """A run whose driver raised: it ends FAILED, recorded, whatever happened."""
        try:
            # Through the recorder, flushed: what the engine queued for the run before it
            # failed (its RUNNING) is written before the run ends FAILED below, not after.
            self.engine.recorder.add(LogRecord(
                run_id, time.time(), "error",
                f"run failed to start: {type(exc).__name__}: {exc}"))
            self.engine.recorder.flush(run_id)     # another run's batch error is its own
        except Exception:  # noqa: BLE001 - the run must still end FAILED, below
            log.warning("run %s: the log of its failed start could not be written",
                        run_id, exc_info=True)
        self.catalog.finish_running(run_id, RunState.FAILED, f"{type(exc).__name__}: {exc}",
                                    self.engine.clock.now())
        return RunResult(run_id, RunState.FAILED, error=exc)

    def cancel(self, run_id: str, reason: str | None = None) -> RunRow:
        reason = reason or "cancelled by user"
        run = self.catalog.get_run(run_id)
        if run.state.terminal:
            raise ConflictError(f"run {run_id} already ended ({run.state.value})")
        if run.state is RunState.PENDING and self.catalog.cancel_pending(run_id, reason):
            return self.catalog.get_run(run_id)
        if not self.engine.cancel(run_id, reason):
            if not self._driving(run_id):
                rec = self.engine.metadata.get_run(run_id) if self.engine.metadata else None
                beat = rec.heartbeat_at if rec is not None else None
                if (beat is not None and time.time() - beat > LIVE_WINDOW) or \
                        self.engine.driver_dead(run_id):
                    # Its driver is gone (killed): ended here, claimed and fenced.
                    self.engine.end_driverless(run_id, reason)
                    return self.catalog.get_run(run_id)
                raise ConflictError(f"run {run_id} is RUNNING in another process; it cannot be "
                                    "cancelled from here")
            # Claimed (or being started) here, but the engine has not registered the loop yet:
            # wait for it briefly. A start that gives up or a driver that ends stops the wait.
            deadline = time.monotonic() + 5
            while not self.engine.cancel(run_id, reason) and self._driving(run_id):
                if time.monotonic() > deadline:
                    raise ConflictError(f"run {run_id} could not be cancelled")
                time.sleep(0.01)
        self.wait(run_id, timeout=10)
        return self.catalog.get_run(run_id)

    def _driving(self, run_id: str) -> bool:
        """Whether this process is starting or driving ``run_id``."""
        with self._lock:
            thread = self._threads.get(run_id)
            return run_id in self._starting or (thread is not None and thread.is_alive())

    def wait(self, run_id: str, timeout: float | None = None) -> RunRow:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
        return self.catalog.get_run(run_id)

    def result(self, run_id: str, *, ended: bool = False,
               settle: float = 10.0) -> RunResult | None:
        """The result of a run this process drove. ``ended``: the caller saw the run's final
        state recorded; the engine records it before ``run`` returns, so a driver may still be
        handing the result over (exporting lineage first): wait for it, at most ``settle``
        seconds, rather than answer without it."""
        res = self._results.get(run_id)
        if res is None and ended:
            thread = self._threads.get(run_id)
            if thread is not None:
                thread.join(settle)
                res = self._results.get(run_id)
        return res

    def driving(self, run_id: str) -> bool:
        """Whether this process's driver thread of ``run_id`` has not handed over yet."""
        return run_id in self._threads

    def active(self) -> list[str]:
        with self._lock:
            return list(self._threads)

    # -- views ------------------------------------------------------------------------------
    def progress(self, run: RunRow, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Counts per state: live from the engine while this process drives the run, else
        ``counts`` (or the store's)."""
        loop = self.engine.runs.get(run.run_id)
        if loop is not None:
            counts = {k.value: v for k, v in loop.state_counts().items()}
        elif counts is None:
            counts = {k.value: v for k, v in self.catalog.store.task_counts(run.run_id).items()}
        total = sum(counts.values())
        done = counts.get("SUCCESS", 0)
        failed = counts.get("FAILED", 0)
        skipped = counts.get("SKIPPED", 0) + counts.get("CANCELLED", 0)
        running = counts.get("RUNNING", 0)
        return {"total_tasks": total, "completed_tasks": done, "failed_tasks": failed,
                "skipped_tasks": skipped, "running_tasks": running,
                "pending_tasks": total - done - failed - skipped - running,
                "percent": round(100.0 * (done + failed + skipped) / total, 2) if total else
                (100.0 if run.state.terminal else 0.0)}

    def status(self, run_id: str, reader: StatusReader | None = None) -> tuple[RunRow, dict[str, Any]]:
        """A run and its progress, on the cheapest path (a client polling it)."""
        live = run_id in self.engine.runs
        run, counts = self.catalog.run_status(run_id, counts=not live, reader=reader)
        # Read without counts while live: if the run ended in between, ``progress`` finds no
        # loop and must read the store's counts, not take the empty ones as the answer.
        return run, self.progress(run, None if live else counts)

    def outputs(self, run_id: str) -> Any:
        """The run's return value when this server drove it (JSON-able), else None."""
        res = self._results.get(run_id)
        return None if res is None else res.value

    def close(self, timeout: float = 10.0) -> None:
        for run_id in self.active():
            self.engine.cancel(run_id, "server shutting down")
        for thread in list(self._threads.values()):
            thread.join(timeout)


def call_params(fn: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The params a Python pipeline is called with: a schedule's ``logical_date`` is passed
    only to a function that takes it (it always stays in the run's recorded params)."""
    if "logical_date" not in params:
        return dict(params)
    sig = inspect.signature(fn)
    takes = "logical_date" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return dict(params) if takes else {k: v for k, v in params.items() if k != "logical_date"}


def _defaults_to_record(fn: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``recorded_defaults`` of a pipeline the server calls by keyword: not a positional-only
    parameter's (it cannot be passed so), nor one the start's check would refuse as the wrong
    type (a default is the author's, not a request's: ``n: int = 3.0`` runs as it is)."""
    defaults = recorded_defaults(fn, params)
    if not defaults:
        return defaults
    sig = inspect.signature(fn)
    types = param_json_types(fn)
    return {k: v for k, v in defaults.items()
            if sig.parameters[k].kind is not inspect.Parameter.POSITIONAL_ONLY
            and (k not in types or json_fits(v, types[k]))}


def unexpected_start_error(exc: BaseException) -> str:
    """The error recorded on a run whose start failed unexpectedly: the exception's type, not
    its text (which may name paths, hosts or values; the server log has it)."""
    return (f"run failed to start: {type(exc).__name__} (an unexpected error; the server log "
            "has the details)")


def _check_config(config: Mapping[str, Any]) -> None:
    mp, timeout = config.get("max_parallel"), config.get("timeout")
    if mp is not None and (not isinstance(mp, int) or isinstance(mp, bool) or mp < 1):
        raise DefinitionError("config.max_parallel must be a positive integer",
                              [{"field": "config.max_parallel", "message": "must be >= 1"}])
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or timeout <= 0):
        raise DefinitionError("config.timeout must be a positive number of seconds",
                              [{"field": "config.timeout", "message": "must be > 0"}])
    eh = config.get("error_handler")
    if eh is not None and eh not in ("fail", "continue", "retry"):
        raise DefinitionError("config.error_handler must be fail, continue or retry",
                              [{"field": "config.error_handler", "message": "fail|continue|retry"}])


__all__ = ["RunService", "NotFoundError"]
