"""``twingraph dynamic execute``: run a declarative DAG file with the dynamic scheduler."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from rich.markup import escape

from twingraph.cli.display import LiveProgress, console, err_console, summary_table
from twingraph.errors import TwinGraphError


def register(app: typer.Typer) -> None:
    @app.command()
    def execute(program_file: str,
                storage_backend: Annotated[str, typer.Option(help="sqlite, filesystem, hybrid or memory")] = "sqlite",
                storage_path: Annotated[str, typer.Option()] = "./voxlogica_storage",
                max_concurrent: Annotated[int, typer.Option(min=1)] = 4,
                progress: Annotated[bool, typer.Option("--progress", help="Show execution progress")] = False,
                load: Annotated[list[str], typer.Option("--load", help="Module or file with operations")] = [],  # noqa: B006
                no_cache: Annotated[bool, typer.Option("--no-cache")] = False) -> None:
        """Execute a DAG file (JSON/YAML) using the dynamic scheduler."""
        from twingraph.cli.loading import load_module
        from twingraph.dagfile import load_dag_file
        from twingraph.engine.dynamic import DynamicScheduler, ExecutionConfig
        from twingraph.engine.engine import Engine
        from twingraph.cli.main import _engine
        from twingraph.cli.signals import exit_code, terminate_as_interrupt
        from twingraph.integration import VoxLogicaIntegration
        from twingraph.stores.results.factory import create_storage_backend, options_from_config
        try:
            _load_all(load, load_module)
            dag = load_dag_file(program_file)
            config = ExecutionConfig(max_concurrent_nodes=max_concurrent,
                                     storage_backend=storage_backend, storage_path=storage_path,
                                     no_cache=no_cache)
            _check_before_storage(dag, config)
            storage = create_storage_backend(storage_backend, storage_path, **options_from_config(
                storage_backend, compression=config.compression, cache_size=config.cache_size))
            metadata = _engine().metadata      # an in-memory database refused, as by `run`
            assert metadata is not None        # the default engine always records
            scheduler = DynamicScheduler(storage, config,
                                         engine=Engine(results=storage, metadata=metadata))
            try:
                with terminate_as_interrupt():
                    summary = asyncio.run(_execute(VoxLogicaIntegration(scheduler), dag,
                                                   config, progress))
            except KeyboardInterrupt as exc:
                _cancel(scheduler, dag.dag_id, _why(exc))
                raise typer.Exit(exit_code(exc)) from None
            except BaseException as exc:
                # e.g. BrokenPipeError: the output was closed (``| head -1``) while the DAG
                # ran on a thread of its own; the run stayed RUNNING in the store for good.
                _cancel(scheduler, dag.dag_id, f"the command failed: {type(exc).__name__}",
                        quiet=isinstance(exc, BrokenPipeError))
                raise
        except TwinGraphError as exc:
            err_console.print(f"[red]Execution failed:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        console.print(summary_table(metadata.get_tasks(summary["run_id"])))
        console.print(f"Execution completed: {json.dumps(summary, default=repr)}", markup=False,
                      highlight=False, soft_wrap=True)
        if summary["status"] != "completed":
            raise typer.Exit(1)


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


def _check_before_storage(dag: Any, config: Any) -> None:
    """Validate the DAG (ids, references, cycles, operations, platforms) before the storage
    path is created: a rejected DAG leaves no empty store (or directory tree) behind."""
    from twingraph.engine.dynamic import DynamicScheduler
    from twingraph.engine.engine import Engine
    from twingraph.stores.results.memory import MemoryStorage
    probe = Engine(results=MemoryStorage())
    try:
        DynamicScheduler(probe.results, config, engine=probe).plan(dag)
    finally:
        probe.close()


def _why(exc: KeyboardInterrupt) -> str:
    return str(exc) or "interrupted (Ctrl-C)"


def _cancel(scheduler: Any, dag_id: str, why: str, quiet: bool = False) -> None:
    """Ctrl-C, SIGTERM, or the command failing: the DAG's run goes on in a thread of its own,
    and would stay RUNNING in the store for good if the process just ended. It is cancelled
    and its end recorded first (as ``twingraph run`` does), within a few seconds."""
    run_id = scheduler.run_id(dag_id)
    if run_id is not None:
        scheduler.engine.cancel(run_id, why)
    thread = scheduler.active_executions.get(dag_id)
    if thread is not None:
        thread.join(10)
    try:
        scheduler.engine.recorder.flush()
    except Exception:  # noqa: BLE001 - the interrupt is what is reported
        pass
    if not quiet:
        err_console.print(f"[magenta]{escape(why)}:[/magenta] DAG {escape(dag_id)} cancelled"
                          + (f" (run {escape(run_id)})" if run_id else ""))


async def _execute(integration: Any, dag: Any, config: Any, progress: bool) -> Any:
    """Through the document's integration layer (``execute_with_progress``): progress as a
    live display on a terminal, else a line per 10 %; then the results."""
    from twingraph.integration import execute_with_progress
    scheduler = integration.scheduler
    live = progress and sys.stdout.isatty()
    shown = [-1]

    def snapshot() -> dict[str, Any] | None:
        run_id = scheduler.run_id(dag.dag_id)
        loop = scheduler.engine.runs.get(run_id) if run_id else None
        return dag_progress(loop.progress(), len(dag.nodes)) if loop is not None else None

    def line(p: Any) -> None:
        console.print(f"progress {p.progress_percentage:.0f}% ({p.completed_nodes}/"
                      f"{p.total_nodes} completed, {p.failed_nodes} failed, "
                      f"ETA {p.estimated_completion or '—'})", highlight=False)

    def on_progress(p: Any) -> None:
        step = int(p.progress_percentage) // 10
        if step != shown[0] and not live:
            shown[0] = step
            line(p)

    with LiveProgress(snapshot, live):
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
