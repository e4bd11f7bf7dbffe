"""The ``twingraph`` command line: a thin layer over the engine and the stores."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.markup import escape

from twingraph.cli.display import (LiveProgress, console, err_console, runs_lines, runs_table, shown_tasks,
                                   state_label, finish_hint, silent_for,
                                   summary_table, tasks_table, ts)
from twingraph.core.jsonview import finite, json_default
from twingraph.core.states import RunState
from twingraph.errors import ConfigurationError, NotFoundError, TwinGraphError, ValidationError

app = typer.Typer(help="TwinGraph: data pipelines as decorated Python or declarative graphs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
runs_app = typer.Typer(help="Inspect recorded runs.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)
dynamic_app = typer.Typer(help="Dynamic scheduler commands.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(dynamic_app, name="dynamic")


def _register_server() -> None:
    from twingraph.cli.server import server
    app.command("server")(server)


_register_server()
__import__("twingraph.cli.apikey", fromlist=["register"]).register(app)   # twingraph apikey ...
app.add_typer(__import__("twingraph.cli.stream", fromlist=["app"]).app, name="stream")  # twingraph stream ...


def _fail(exc: BaseException, code: int = 1) -> NoReturn:
    # soft_wrap: one error is one line however long (rich cut it at 80 columns when piped).
    # highlight=False: rich's highlighting is quadratic in a long token (a 40 KB one took 20 s)
    err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@contextmanager
def _usage_errors() -> Iterator[None]:
    """What ``run`` does with a ``TwinGraphError`` (a bad filter, a database that cannot be
    opened, reached or migrated): one line on stderr and exit 2, not a traceback."""
    try:
        yield
    except TwinGraphError as exc:
        _fail(exc, 2)


def _engine() -> Any:
    from twingraph.runtime import default_engine
    from twingraph.settings import Settings
    _refuse_in_memory(Settings.from_env().database_url)
    return default_engine()


def _check_settings() -> None:
    """What ``_engine`` would refuse in the settings, without making the home."""
    from twingraph.runtime import check_home
    from twingraph.settings import Settings
    settings = Settings.from_env()
    check_home(settings)
    _refuse_in_memory(settings.database_url)


@contextmanager
def _reading() -> Iterator[Any]:
    """The home's metadata store opened read-only, for commands that only look: they write
    nothing and create nothing, so a home on a read-only disk, or another user's, can be
    inspected. A home with no database yet reads as one with no runs."""
    from twingraph.runtime import check_home
    from twingraph.settings import Settings
    from twingraph.stores.metadata import MemoryMetadataStore, SQLMetadataStore
    settings = Settings.from_env()
    check_home(settings)
    url = settings.database_url
    _refuse_in_memory(url)
    try:
        store: Any = SQLMetadataStore(url, read_only=True)
    except NotFoundError:
        store = MemoryMetadataStore()
    try:
        yield store
    finally:
        store.close()


def _refuse_in_memory(url: str) -> None:
    """An in-memory metadata database (``sqlite://``, ``sqlite:///:memory:``) ends with the
    command: a run's records, an upgrade, vanished as it exited without a word. The library
    may use one (tests, a notebook); a command is refused (``ConfigurationError``, exit 2)."""
    from twingraph.stores.metadata.url import is_memory_sqlite, normalize_url
    if is_memory_sqlite(normalize_url(url)):
        raise ConfigurationError(f"the metadata database {url} is in memory: what a command "
                                 f"records would vanish when it exits; set "
                                 f"TWINGRAPH_DATABASE_URL to a file (sqlite:///PATH) or a server")


@app.command()
def run(target: Annotated[Optional[str], typer.Argument(help="FILE.py[:pipeline] or module[:pipeline]")] = None,
        param: Annotated[list[str], typer.Option("--param", "-p", help="KEY=VALUE (JSON values allowed)")] = [],  # noqa: B006
        max_parallel: Annotated[Optional[int], typer.Option(min=1)] = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore stored results")] = False,
        resume: Annotated[Optional[str], typer.Option(help="Finish run RUN_ID, reusing what it stored")] = None,
        progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress")] = None,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Print the run's value alone on stdout, as JSON (the progress, "
                           "summary and run line go to stderr): for | jq")] = False) -> None:
    """Run a @pipeline from a Python file or module."""
    from twingraph.cli.loading import find_pipeline, load_module, parse_params, split_target
    from twingraph.cli.signals import exit_code, terminate_as_interrupt
    holder: dict[str, Any] = {}
    recorded = False
    try:
        with terminate_as_interrupt(), _stdout_to_stderr(as_json):
            if resume:
                engine = _engine()
                resume = _resolve_run(engine.metadata, resume).run_id    # a prefix, as runs show
                file, name = _resume_target(engine.metadata, resume, target)
                recorded = target is None or split_target(target)[1] is None
            elif target:
                file, name = split_target(target)
            else:
                raise typer.BadParameter("give FILE.py[:pipeline], or --resume RUN_ID")
            if not resume:      # the settings first (nothing made), then the user's code
                _check_settings()
            module = load_module(file)
            pipe = find_pipeline(module, name, recorded=bool(resume) and recorded)
            params = parse_params(param, pipe.fn)
            if not resume:  # after the checks: a typo in a name left a home behind
                engine = _engine()
            if resume:
                params = _resume_params(engine.metadata.get_run(resume), params, pipe.fn)
                _say_watch(engine.metadata.get_run(resume))
            shown_on = err_console if as_json else console
            show = (sys.stderr if as_json else sys.stdout).isatty() if progress is None else progress
            with LiveProgress(lambda: holder["loop"].progress() if "loop" in holder else None,
                              show, shown_on):
                # The parameters apart from the options: a pipeline may name one ``no_cache``.
                result = pipe.run_with((), params, engine=engine, no_cache=no_cache,
                                       max_parallel=max_parallel, resume=resume,
                                       on_start=lambda loop: holder.setdefault("loop", loop))
    except TwinGraphError as exc:
        _fail(exc, 2)
    except KeyboardInterrupt as exc:
        if "loop" in holder:        # the run started: as it ended (CANCELLED, it can go on)
            run_id = holder["loop"].run_id
            rec = _ended_as(run_id)
            said = str(exc) or f"run {run_id} interrupted"
            told = err_console if as_json else console      # --json: stdout is the value's
            if rec is not None and rec.state.value == "SUCCESS":
                # the interrupt came as it finished: nothing to resume (a resume is refused)
                told.print(f"[magenta]{escape(said)}[/magenta] (it had finished: "
                           f"twingraph runs show {escape(run_id)})", soft_wrap=True)
            else:
                told.print(f"[magenta]{escape(said)}[/magenta] (resume it with --resume "
                           f"{escape(run_id)})", soft_wrap=True)
        else:
            err_console.print(f"[magenta]{escape(str(exc) or 'interrupted')}[/magenta] before "
                              f"a run started")
        raise typer.Exit(exit_code(exc)) from None
    # --json: stdout gets the run's value alone (``| jq`` read the table first)
    report = err_console if as_json else console
    try:
        tasks = engine.metadata.get_tasks(result.run_id)
    except TwinGraphError as exc:   # the database went away as the run ended: no traceback
        tasks = []
        err_console.print(f"[yellow]the run's task rows cannot be read:[/yellow] "
                          f"{escape(str(exc))} (twingraph runs show {escape(result.run_id)} "
                          f"once the database is back; a run that did not end SUCCESS "
                          f"resumes with --resume {escape(result.run_id)})", soft_wrap=True)
    else:
        report.print(summary_table(tasks))
    state = result.state.value
    # soft_wrap: a narrow terminal must not break the run id over lines (it is copied).
    report.print(f"run [bold]{escape(result.run_id)}[/bold] {escape(pipe.name)}: "
                 f"[{'green' if state == 'SUCCESS' else 'red'}]{state}[/]", soft_wrap=True)
    if result.error is not None:
        where = _body_traceback(result.error)
        if where:
            err_console.print(where, markup=False, highlight=False, soft_wrap=True, end="")
        err_console.print(f"[red]{type(result.error).__name__}:[/red] {escape(str(result.error))}",
                          soft_wrap=True, highlight=False)
        failed = [n for n in (getattr(result.error, "failures", None) or {})
                  if n in {t.node_id for t in tasks}]
        if failed:      # its traceback (file and line) is in the run's log, not above
            err_console.print(f"its traceback: twingraph runs logs {escape(result.run_id)} "
                              f"--node {escape(failed[0])}", soft_wrap=True)
        raise typer.Exit(1)
    if as_json:               # one line, whatever the value (null included): for | jq
        try:
            try:            # strict JSON: NaN and infinities as null
                print(json.dumps(finite(result.value), default=json_default, allow_nan=False))
            except ValueError:       # one inside an array or a value of another library
                print(json.dumps(result.value, default=json_default))
        except (TypeError, ValueError, RecursionError):
            print(json.dumps(repr(result.value)))
    elif result.value is not None:
        _print_value(result.value)


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """``run --json``: while the pipeline is loaded and runs, what anything prints to stdout
    (the body, a component, a worker process, C code) goes to stderr, so stdout gets the
    run's value alone (``| jq`` failed on a component's ``print``). File descriptor 1 itself
    is pointed at 2, and back after."""
    if not enabled or sys.stdout is None or sys.stderr is None:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):     # (a sys.stdout that is not fd 1 too)
        try:
            sys.__stdout__.flush() if sys.__stdout__ is not None else None
            saved = os.dup(1)
            os.dup2(2, 1)
        except (OSError, ValueError, AttributeError):    # no file descriptors: as is
            yield
            return
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass
            os.dup2(saved, 1)
            os.close(saved)


def _body_traceback(error: BaseException) -> str:
    """Where the pipeline's own code raised ``error`` (its body's frames and what they
    called, TwinGraph's own frames left out), as a traceback's text; "" for TwinGraph's own
    errors (a task's failure is in ``runs logs`` with its traceback)."""
    import traceback
    if isinstance(error, TwinGraphError) or error.__traceback__ is None:
        return ""
    package = str(Path(__file__).resolve().parents[1])
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not str(Path(f.filename).resolve()).startswith(package)]
    if not frames:
        return ""
    return "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))


def _ended_as(run_id: str) -> Any:
    """The run's record as stored (None if it cannot be read): what an interrupted command
    tells about it."""
    try:
        return _engine().metadata.get_run(run_id)
    except Exception:  # noqa: BLE001 - the interrupt is what is reported
        return None


def _say_watch(rec: Any) -> None:
    """Before a resume or ``runs cancel`` of a RUNNING run heard from lately: why the command
    waits (it watches the run's heartbeat until its driver is surely gone), and how long."""
    import time
    from twingraph.engine.engine import driver_watch
    if rec is None or rec.state is not RunState.RUNNING:
        return
    if _engine().driver_alive(rec.run_id) is not None:
        return                        # refused at once: its driver holds the run's lock
    if _engine().driver_dead(rec.run_id):
        return                        # not watched: its lock proves its driver died
    wait = driver_watch(rec.heartbeat_at, time.time())
    if wait >= 0.5:
        err_console.print(f"run {escape(rec.run_id)} was heard from "
                          f"{max(0.0, time.time() - rec.heartbeat_at):.0f} s ago: making sure "
                          f"its driver is gone (up to {wait:.0f} s)...", soft_wrap=True)


def _print_value(value: Any) -> None:
    """A run's value as JSON (what JSON cannot hold inside it as its ``repr``), or all of it as
    its ``repr`` when JSON cannot hold its shape (``{(1, 2): 3}``, a cycle): the run succeeded,
    and printing its value must not end in a traceback and exit 1 after SUCCESS."""
    try:
        text = json.dumps(value, default=json_default)
    except (TypeError, ValueError, RecursionError):
        console.print(repr(value), markup=False, highlight=False, soft_wrap=True)
        return
    console.print_json(text)


def _resume_params(rec: Any, given: dict[str, Any], fn: Any) -> dict[str, Any]:
    """The ``--param`` values ``run --resume`` passes on: a resumed run keeps the parameters
    it was started with, so a value that differs from the recorded one is a usage error (it
    was silently dropped); only those the run could not record exactly (``inexact_params``)
    are taken, as ``Pipeline.run(resume=...)`` needs them given again."""
    from twingraph.dsl.params import param_text_types
    from twingraph.dsl.pipeline import differs_from_record
    inexact = set((rec.source or {}).get("inexact_params") or ())
    typed = set((rec.source or {}).get("typed_params") or ())
    recorded = rec.params or {}
    kinds = param_text_types(fn)
    differ = sorted(k for k, v in given.items()
                    if k not in inexact and differs_from_record(k, v, recorded, typed, kinds))
    if differ:
        was = ", ".join(f"{k}={json.dumps(recorded[k], ensure_ascii=False)}" if k in recorded
                        else f"{k} not given" for k in differ)
        raise ValidationError(f"run {rec.run_id} was started with {was}: a resumed run keeps "
                              f"its parameters (start a new run to change them)")
    return {k: v for k, v in given.items() if k in inexact}


def _resume_target(md: Any, resume: str, target: str | None) -> tuple[str, str | None]:
    """The file or module and the pipeline ``run --resume RUN_ID`` loads (``target`` when
    given, else what the run recorded: the pipeline by its recorded name, which ``daily =
    pipeline(name="daily")(_body)`` does not share with its function), after checking the run
    is one ``run`` can resume: a pipeline run that has not finished successfully. Said here
    plainly rather than as the engine's transition error."""
    from twingraph.cli.loading import split_target
    rec = md.get_run(resume)
    if rec is None:
        _fail(TwinGraphError(f"run {resume} not found"))
    src = rec.source or {}
    if src.get("kind") == "dag":
        _fail(TwinGraphError(
            f"run {resume} is a run of the DAG {src.get('dag_id')!r}: `twingraph run --resume` "
            f"resumes @pipeline runs only (run the DAG file again with "
            f"`twingraph dynamic execute`)"), 2)
    if rec.state is RunState.SUCCESS:
        _fail(TwinGraphError(f"run {resume} already finished successfully: there is nothing "
                             f"to resume"), 2)
    if target:
        file, name = split_target(target)
        # FILE.py without :NAME names the pipeline the run recorded (a file with several
        # pipelines was refused as ambiguous); a name it gives must be that one (checked later)
        return file, name or rec.pipeline
    where = _recorded_where(src)
    if not where:
        _fail(TwinGraphError(f"run {resume} did not record which file or module it ran: give "
                             f"it as FILE.py[:pipeline] --resume {resume}"), 2)
    return where, rec.pipeline


def _recorded_where(src: dict[str, Any]) -> str | None:
    """Where a resumed run's pipeline is loaded from: the module it was started from when that
    is a package's module (``mypkg.flow`` at ``ROOT/mypkg/flow.py``: its relative imports need
    the package, and the file alone fails), with ``ROOT`` put first on ``sys.path`` (the resume
    may be typed in another directory); otherwise the recorded file (a top-level module's file
    is the same code, and loads from any directory)."""
    module, file = src.get("module"), src.get("file")
    if module and file:
        path, parts = Path(file), module.split(".")
        tail = (*parts, "__init__.py") if path.name == "__init__.py" else \
            (*parts[:-1], parts[-1] + ".py")
        if len(tail) > 1 and path.parts[-len(tail):] == tail:
            root = str(path.parents[len(tail) - 1])
            if root not in sys.path:
                sys.path.insert(0, root)
            return str(module)
    return file or module


#: The shortest run id prefix ``runs show|logs`` resolve (shorter ones must be whole ids).
MIN_RUN_PREFIX = 6
#: How many candidates an ambiguous prefix lists.
_MAX_CANDIDATES = 10


def _resolve_run(md: Any, given: str) -> Any:
    """The run ``given`` names: its whole id, or a unique prefix of at least ``MIN_RUN_PREFIX``
    characters. Not found: exit 1; an ambiguous prefix: exit 2, listing the candidates."""
    rec = md.get_run(given)
    if rec is not None:
        return rec
    if len(given) < MIN_RUN_PREFIX:
        _fail(TwinGraphError(f"run {given} not found (a run id prefix needs at least "
                             f"{MIN_RUN_PREFIX} characters)"))
    ids = md.find_run_ids(given, limit=_MAX_CANDIDATES + 1)
    if not ids:
        _fail(TwinGraphError(f"run {given} not found"))
    if len(ids) > 1:
        more = "\n  ..." if len(ids) > _MAX_CANDIDATES else ""
        _fail(TwinGraphError(
            f"run id prefix {given} is ambiguous; it matches "
            f"{'more than ' + str(_MAX_CANDIDATES) if more else len(ids)} runs:\n  "
            + "\n  ".join(ids[:_MAX_CANDIDATES]) + more + "\ngive more characters of the id"), 2)
    rec = md.get_run(ids[0])
    if rec is None:                                  # deleted in between
        _fail(TwinGraphError(f"run {given} not found"))
    return rec


@runs_app.command("list")
def runs_list(pipeline: Annotated[Optional[str], typer.Option()] = None,
              state: Annotated[Optional[str], typer.Option()] = None,
              limit: Annotated[int, typer.Option(min=1, max=1000)] = 20) -> None:
    """Recent runs, newest first (a table on a terminal; tab-separated lines, full run ids,
    when piped)."""
    with _usage_errors(), _reading() as md:
        found = md.list_runs(pipeline=pipeline, state=state and state.upper(), limit=limit)
    widest = max((len(r.run_id) for r in found), default=0)
    states = max((len(state_label(r)) for r in found), default=0)
    # the table when every column fits whole (at 80 columns the dates broke over three
    # lines; "RUNNING (driver gone)" left the pipeline column no width), else the plain lines
    if console.is_terminal and console.width >= widest + states + 51:
        console.print(runs_table(found))
    else:
        for line in runs_lines(found):
            typer.echo(line)


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(
                  help=f"Run id, or a unique prefix of it (at least {MIN_RUN_PREFIX} characters)")],
              limit: Annotated[int, typer.Option(min=1, help="Show at most this many tasks "
                                                 "(failed ones first)")] = 200) -> None:
    """One run: its state, parameters and tasks (with memo hit/miss and why), at most LIMIT
    tasks; when there are more, stderr says how many were left out and which --limit shows
    them. Failed tasks are kept in the table before any other."""
    with _usage_errors(), _reading() as md:
        rec = _resolve_run(md, run_id)
        tasks = md.get_tasks(rec.run_id)
    # Stored text (ids, names, params, errors) may hold brackets: escaped, never read as markup.
    console.print(f"[bold]{escape(rec.run_id)}[/bold]  pipeline {escape(rec.pipeline)}  "
                  f"state {rec.state.value}")
    console.print(f"created {ts(rec.created_at)}  started {ts(rec.started_at)}  "
                  f"ended {ts(rec.ended_at)}", highlight=False)
    console.print(f"params {escape(json.dumps(rec.params, ensure_ascii=False))}  "
                  f"config {escape(json.dumps(rec.config, ensure_ascii=False))}", highlight=False)
    if rec.error:
        console.print(f"[red]error:[/red] {escape(rec.error)}", highlight=False)
    silent = silent_for(rec)
    if silent is not None:
        console.print(f"[yellow]its driver has not been heard from for {silent:.0f} s: it has "
                      f"stopped (killed or crashed); {escape(finish_hint(rec))}[/yellow]",
                      soft_wrap=True)
    shown = shown_tasks(tasks, limit)
    console.print(tasks_table(shown, total=len(tasks),
                              width=console.width if console.is_terminal else None))
    left = len(tasks) - len(shown)
    if left:
        failed = sum(t.state.value == "FAILED" for t in tasks) \
            - sum(t.state.value == "FAILED" for t in shown)
        err_console.print(f"({left} more task{'' if left == 1 else 's'} not shown"
                          f"{f', {failed} of them failed' if failed else ''}: --limit "
                          f"{len(tasks)} shows all {len(tasks)})", markup=False, highlight=False,
                          soft_wrap=True)


@runs_app.command("cancel")
def runs_cancel(run_id: Annotated[str, typer.Argument(
                    help=f"Run id, or a unique prefix of it (at least {MIN_RUN_PREFIX} characters)")],
                reason: Annotated[Optional[str], typer.Option(
                    help="Recorded as the run's error")] = None) -> None:
    """End a RUNNING run whose driver is gone (killed, crashed): the run and its unfinished
    tasks become CANCELLED. For a run nobody will resume (a DAG run, or one given up); a run
    whose driver is alive is refused (stop it where it runs). A PENDING run (created over
    REST or by a schedule, not started) is cancelled as the server would."""
    from twingraph.core.logtext import storable
    from twingraph.errors import ConflictError
    if reason is not None:       # terminal bytes that are not UTF-8 decode to lone surrogates
        reason = storable(reason)
    with _usage_errors():
        engine = _engine()
        rec = _resolve_run(engine.metadata, run_id)
        if rec.state is RunState.PENDING:
            from twingraph.stores.metadata.catalog_store import SQLCatalog
            if not SQLCatalog(engine.metadata).cancel_pending(rec.run_id,
                                                              reason or "cancelled by user"):
                now = engine.metadata.get_run(rec.run_id)
                raise ConflictError(f"run {rec.run_id} is no longer PENDING: it is "
                                    f"{now.state.value if now else 'gone'}")
            state = RunState.CANCELLED
        else:
            _say_watch(rec)
            state = engine.end_driverless(rec.run_id, reason or "cancelled: its driver was gone")
    console.print(f"run [bold]{escape(rec.run_id)}[/bold]: {state.value}", soft_wrap=True)


@runs_app.command("logs")
def runs_logs(run_id: Annotated[str, typer.Argument(
                  help=f"Run id, or a unique prefix of it (at least {MIN_RUN_PREFIX} characters)")],
              node: Annotated[Optional[str], typer.Option()] = None,
              level: Annotated[Optional[str], typer.Option()] = None,
              limit: Annotated[int, typer.Option(min=1)] = 1000,
              offset: Annotated[int, typer.Option(min=0, help="Skip this many lines first")] = 0) -> None:
    """A run's log lines, oldest first (optionally one node's, at a minimum level), at most
    LIMIT of them from OFFSET on; when there are more, stderr says which --offset shows them."""
    with _usage_errors(), _reading() as md:
        rec = _resolve_run(md, run_id)
        if node is not None:
            names = sorted(t.node_id for t in md.get_tasks(rec.run_id))
            if node not in names:      # no lines at all looked like a quiet task
                close = difflib.get_close_matches(node, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else \
                    f"; its tasks: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}" \
                    if names else "; it has no tasks"
                raise NotFoundError(f"run {rec.run_id} has no task {node!r}{hint}")
        logs = md.get_logs(rec.run_id, node_id=node, level=level, limit=limit + 1,
                           offset=offset)
    more = len(logs) > limit
    for log in logs[:limit]:
        where = f" [{log.node_id}]" if log.node_id else ""
        # soft_wrap: one record is one line however long (piped to grep, a file, a pager),
        # never cut at the console's width.
        console.print(f"{ts(log.at)} {log.level.upper():7}{where} {log.message}", markup=False,
                      highlight=False, soft_wrap=True)
    if more:
        err_console.print(f"(more log lines follow: --offset {offset + limit} shows the next "
                          f"{limit})", markup=False, highlight=False, soft_wrap=True)


@db_app.command("upgrade")
def db_upgrade(url: Annotated[Optional[str], typer.Option(help="Database URL (default: settings)")] = None) -> None:
    """Bring the metadata database schema to the latest version (Alembic)."""
    from twingraph.runtime import ensure_home
    from twingraph.settings import Settings
    from twingraph.stores.metadata.migrate import upgrade
    settings = Settings.from_env()
    target = url or settings.database_url
    try:
        _refuse_in_memory(target)
        if target.startswith("sqlite:///"):
            ensure_home(settings)
        # What upgrade() says it reached: asking again on another connection read None.
        console.print(f"database at head: {upgrade(target)}")
    except TwinGraphError as exc:
        _fail(exc, 2)


from twingraph.cli import dynamic as _dynamic  # noqa: E402  (registers its commands)

_dynamic.register(dynamic_app)


def main() -> None:
    _printable_streams()
    app()


def _printable_streams() -> None:
    """On a terminal or pipe whose encoding cannot spell every character (``latin-1``,
    ``ascii``), print what it cannot as escapes: a pipeline or node name, a log line or a
    parameter in another script must not crash ``runs show`` half-way. In UTF-8 too: a lone
    surrogate (a file name ``os.listdir`` could not decode, a ``--param "\\ud800"``) cannot
    be encoded, and ``runs show`` of such a run died with a traceback."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") \
                and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):       # a stream that cannot change: as it is
                pass


if __name__ == "__main__":
    main()
