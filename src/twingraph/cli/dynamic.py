"""``twingraph dynamic execute``: run a declarative DAG file with the dynamic scheduler."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any, Optional

import typer

from rich.markup import escape

from twingraph.cli.display import LiveProgress, console, err_console, summary_table
from twingraph.core.jsonview import NOT_PLAIN, finite, plain
from twingraph.errors import TwinGraphError


def register(app: typer.Typer) -> None:
    @app.command()
    def execute(program_file: str,
                storage_backend: Annotated[str, typer.Option(help="sqlite, filesystem, hybrid or memory")] = "sqlite",
                storage_path: Annotated[str, typer.Option()] = "./voxlogica_storage",
                max_concurrent: Annotated[int, typer.Option(min=1)] = 4,
                progress: Annotated[bool, typer.Option("--progress", help="Show execution progress")] = False,
                load: Annotated[list[str], typer.Option("--load", help="Module or file with operations")] = [],  # noqa: B006
                no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
                max_retries: Annotated[int, typer.Option(
                    min=0, help="Retries of a failed node (1, 2, 4 s apart)")] = 3,
                node_timeout: Annotated[Optional[float], typer.Option(
                    min=0.001, help="Seconds a node may run (default 300; a @component's own "
                                    "shorter timeout still applies)")] = None,
                as_json: Annotated[bool, typer.Option(
                    "--json", help="Print the summary alone on stdout, as one line of JSON "
                                   "(progress and the table go to stderr): for | jq")] = False
                ) -> None:
        """Execute a DAG file (JSON/YAML) using the dynamic scheduler."""
        from twingraph.cli.loading import load_module
        from twingraph.dagfile import load_dag_file
        from twingraph.engine.dynamic import DynamicScheduler, ExecutionConfig
        from twingraph.engine.engine import Engine
        from twingraph.cli.main import _engine, _stdout_to_stderr
        from twingraph.cli.signals import exit_code, terminate_as_interrupt
        from twingraph.integration import VoxLogicaIntegration
        from twingraph.stores.results.factory import create_storage_backend, options_from_config
        try:
            _load_all(load, load_module)
            dag = load_dag_file(program_file)
            config = ExecutionConfig(max_concurrent_nodes=max_concurrent,
                                     storage_backend=storage_backend, storage_path=storage_path,
                                     no_cache=no_cache, max_retries=max_retries)
            _check_before_storage(dag, config, loaded=bool(load))
            # The metadata database first: one refused (in memory, at an unknown revision)
            # left an empty result store behind.
            metadata = _engine().metadata      # an in-memory database refused, as by `run`
            assert metadata is not None        # the default engine always records
            storage = create_storage_backend(storage_backend, storage_path, **options_from_config(
                storage_backend, compression=config.compression, cache_size=config.cache_size))
            scheduler = DynamicScheduler(storage, config, node_timeout=node_timeout,
                                         engine=Engine(results=storage, metadata=metadata))
            try:
                # --json: what operations print goes to stderr, stdout gets the summary alone
                with terminate_as_interrupt(), _stdout_to_stderr(as_json):
                    summary = asyncio.run(_execute(VoxLogicaIntegration(scheduler), dag,
                                                   config, progress,
                                                   err_console if as_json else console))
            except KeyboardInterrupt as exc:
                if not _cancel(scheduler, dag.dag_id, _why(exc)):
                    run_id = scheduler.run_id(dag.dag_id) or "RUN_ID"
                    err_console.print(f"[magenta]{escape(_why(exc))}[/magenta] after DAG "
                                      f"{escape(dag.dag_id)} had ended: see its results with "
                                      f"twingraph runs show {escape(run_id)}", soft_wrap=True)
                raise typer.Exit(exit_code(exc)) from None
            except BaseException as exc:
                # e.g. BrokenPipeError: the output was closed (``| head -1``) while the DAG
                # ran on a thread of its own; the run stayed RUNNING in the store for good.
                # If it had ended (collecting its results failed), nothing is cancelled and
                # the error itself is what is reported (below, or by Python).
                _cancel(scheduler, dag.dag_id, f"the command failed: {type(exc).__name__}",
                        quiet=isinstance(exc, BrokenPipeError))
                raise
        except TwinGraphError as exc:
            err_console.print(f"[red]Execution failed:[/red] {escape(str(exc))}",
                              soft_wrap=True)
            raise typer.Exit(2) from None
        if as_json:
            err_console.print(summary_table(metadata.get_tasks(summary["run_id"])))
            print(_summary_json(summary))
            if summary["status"] != "completed":
                raise typer.Exit(1)
            return
        console.print(summary_table(metadata.get_tasks(summary["run_id"])))
        said = _OUTCOME.get(summary["status"], "Execution failed")
        # as the document's CLI: a failure is said on stderr (the table above stays on stdout)
        out = console if summary["status"] == "completed" else err_console
        out.print(f"{said}: {_summary_json(summary)}", markup=False, highlight=False,
                  soft_wrap=True)
        if summary["status"] != "completed":
            raise typer.Exit(1)


#: The line before a summary, by its status: a failed DAG is not said to have "completed".
_OUTCOME = {"completed": "Execution completed", "failed": "Execution failed",
            "cancelled": "Execution cancelled"}


def _load_all(modules: list[str], load_module: Any) -> None:
    """Load the ``--load`` modules; two that register one operation name under different
    functions are a usage error naming both (the last used to win, silently)."""
    from twingraph.engine.dynamic import registered_operations
    from twingraph.errors import ValidationError
    owner: dict[str, str] = {}
    for m in modules:
        before = registered_operations()
        load_module(m)
        for name, fn in registered_operations().items():
            if name in before and before[name] is not fn and name in owner:
                raise ValidationError(f"operation {name!r} is registered by both "
                                      f"{owner[name]} and {m}: load one of them")
            if before.get(name) is not fn:
                owner[name] = m


def _check_before_storage(dag: Any, config: Any, loaded: bool = True) -> None:
    """Validate the DAG (ids, references, cycles, operations, platforms) before the storage
    path is created: a rejected DAG leaves no empty store (or directory tree) behind. Unknown
    operations come with hints: ``--load`` if none was given, and the registered names close
    to each unknown one."""
    from twingraph.engine.dynamic import DynamicScheduler
    from twingraph.engine.engine import Engine
    from twingraph.errors import GraphValidationError
    from twingraph.stores.results.memory import MemoryStorage
    probe = Engine(results=MemoryStorage())
    try:
        scheduler = DynamicScheduler(probe.results, config, engine=probe)
        try:
            scheduler.plan(dag)
        except GraphValidationError as exc:
            if "unknown operations" not in exc.reason:     # (maybe with dangling references)
                raise
            raise _with_hints(exc, dag, scheduler.executor.known(), loaded) from None
    finally:
        probe.close()


def _with_hints(exc: Any, dag: Any, known: set[str], loaded: bool) -> Exception:
    """``exc`` (unknown operations) with, per node, the registered names close to its
    operation ("did you mean"), and a pointer to ``--load`` when no module was loaded."""
    import difflib
    from twingraph.errors import GraphValidationError
    named = set(exc.nodes)
    op_of = {n.node_id: n.operation for n in dag.nodes
             if n.node_id in named and n.operation not in known}
    why = dict(exc.why)
    names = sorted(known)
    for nid, op in op_of.items():
        close = difflib.get_close_matches(op, names, n=3)
        if close:
            why[nid] = f"{why.get(nid, f'operation {op!r}')}; did you mean " \
                       f"{' or '.join(repr(c) for c in close)}?"
    detail = "" if loaded else ("no --load was given: load the module or file that registers "
                                "them with --load module_or_file.py")
    return GraphValidationError(exc.reason, exc.nodes, detail, why=why)


def _why(exc: KeyboardInterrupt) -> str:
    return str(exc) or "interrupted (Ctrl-C)"


def _cancel(scheduler: Any, dag_id: str, why: str, quiet: bool = False) -> bool:
    """Ctrl-C, SIGTERM, or the command failing: the DAG's run goes on in a thread of its own,
    and would stay RUNNING in the store for good if the process just ended. It is cancelled
    and its end recorded first (as ``twingraph run`` does), within a few seconds. True (and
    "cancelled" said, unless ``quiet``) only if a live run was cancelled: a run that had
    ended (its results failed to be collected) or that ended meanwhile is not said to be."""
    thread = scheduler.active_executions.get(dag_id)
    if thread is None:
        return False                # it has ended: nothing to cancel
    # Its run may not have started yet: the scheduler then cancels it as it starts.
    scheduler._request_cancel(dag_id, why)
    thread.join(10)
    run_id = scheduler.run_id(dag_id)
    try:
        scheduler.engine.recorder.flush()
    except Exception:  # noqa: BLE001 - the interrupt is what is reported
        pass
    result = scheduler.results.get(dag_id)
    ended = result is not None and result.state.value in ("SUCCESS", "FAILED")
    if ended:                     # it finished before the cancel reached it
        return False
    if not quiet:
        err_console.print(f"[magenta]{escape(why)}:[/magenta] DAG {escape(dag_id)} cancelled"
                          + (f" (run {escape(run_id)})" if run_id else ""), soft_wrap=True)
    return True


async def _execute(integration: Any, dag: Any, config: Any, progress: bool,
                   shown_on: Any = console) -> Any:
    """Through the document's integration layer (``execute_with_progress``): progress as a
    live display on a terminal, else a line per 10 %, on ``shown_on``; then the results."""
    from twingraph.integration import execute_with_progress
    scheduler = integration.scheduler
    live = progress and (sys.stderr if shown_on is err_console else sys.stdout).isatty()
    shown = [-1]

    def snapshot() -> dict[str, Any] | None:
        run_id = scheduler.run_id(dag.dag_id)
        loop = scheduler.engine.runs.get(run_id) if run_id else None
        return dag_progress(loop.progress(), len(dag.nodes)) if loop is not None else None

    def line(p: Any) -> None:
        cancelled = f", {p.cancelled_nodes} cancelled" if p.cancelled_nodes else ""
        shown_on.print(f"progress {p.progress_percentage:.0f}% ({p.completed_nodes}/"
                      f"{p.total_nodes} completed, {p.failed_nodes} failed{cancelled}, "
                      f"ETA {p.estimated_completion or '—'})", highlight=False)

    def on_progress(p: Any) -> None:
        step = int(p.progress_percentage) // 10
        if step != shown[0] and not live:
            shown[0] = step
            line(p)

    with LiveProgress(snapshot, live, shown_on):
        summary = await execute_with_progress(integration, dag, config,
                                              on_progress=on_progress if progress else None,
                                              interval=0.2)
    if live:
        line(await scheduler.get_execution_progress(dag.dag_id))
    return summary


def dag_progress(run: dict[str, Any], nodes: int) -> dict[str, Any]:
    """A run's progress (``BodySide.progress``) over the whole DAG of ``nodes`` nodes: a large
    DAG is handed to its run in windows, and the nodes not handed over yet are waiting too
    (counted, and in the ETA at the rate measured so far)."""
    if run["total"] >= nodes:
        return run
    left = nodes - run["finished"]
    rate = run.get("rate")
    return {**run, "total": nodes, "pending": run["pending"] + nodes - run["total"],
            "percent": 100.0 * run["finished"] / nodes,
            "eta_seconds": left / rate if rate else None}


#: The most characters of one value JSON cannot hold that a summary shows (its ``repr``).
REPR_MAX = 1000


def _shown(value: Any) -> Any:
    """A value JSON cannot hold, as the summary shows it: bytes by their size (a 600 KB
    result printed 3 MB of escapes), anything else by its ``repr``, cut at ``REPR_MAX``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{type(value).__name__} of {memoryview(value).nbytes} bytes>"
    out = plain(value)
    if out is not NOT_PLAIN:
        try:
            return finite(out)          # a NumPy NaN is null too
        except RecursionError:
            pass
    text = repr(value)
    if len(text) > REPR_MAX:
        text = f"{text[:REPR_MAX]}... ({len(text) - REPR_MAX} more characters)"
    return text


def _summary_json(summary: dict[str, Any]) -> str:
    """The summary as JSON; a result JSON cannot hold the shape of (``{(1, 2): 3}``, a
    cycle) as its ``repr``: the run ended as it did, and printing it must not end in a
    traceback and exit 1 (the values are stored either way). NaN and infinities are
    ``null``, as ``twingraph run --json`` prints them: strict parsers refuse ``NaN``."""
    try:
        return json.dumps(finite(summary), default=_shown, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        pass
    results = {}
    for node, value in (summary.get("results") or {}).items():
        try:
            value = finite(value)
            json.dumps(value, default=_shown, allow_nan=False)
            results[node] = value
        except (TypeError, ValueError, RecursionError):
            results[node] = _shown(value)
    return json.dumps({**summary, "results": results}, default=_shown, allow_nan=False)
