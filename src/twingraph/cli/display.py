"""Rich rendering for the CLI: a live progress panel and summary tables.

Stored text (run and node ids, names, cache reasons, errors) goes into tables as ``Text``: a
plain string cell is read as Rich markup, and ``KeyError('[/price]')`` would stop the command.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

#: The width rich lays out output that is not a terminal (a pipe, a file) in. No terminal's
#: width applies there; at rich's default of 80 columns an error line was cut in two and a
#: table cell (a component name, a JSON value) folded mid-value for grep or a file to see.
UNWRAPPED = 1_000_000


def _console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr) as it is now: a terminal's own width, or ``UNWRAPPED``."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=UNWRAPPED)


console = _console()
err_console = _console(stderr=True)     # errors go to stderr, results to stdout


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def render_progress(p: dict[str, Any], elapsed: float) -> Group:
    # In a grid: a bar alone ends without a line break, and the counts went on its line (cut
    # at the terminal's width); at most 40 columns, fewer in a narrower terminal.
    bar = Table.grid()
    bar.add_column(max_width=40)
    bar.add_row(ProgressBar(total=max(p["total"], 1), completed=p["finished"]))
    counts = Text.assemble(
        (f"{p['succeeded']} ok ", "green"), (f"{p['running']} running ", "cyan"),
        (f"{p['queued']} queued ", "yellow"), (f"{p['pending']} waiting ", "dim"),
        (f"{p['failed']} failed ", "red"), (f"{p['skipped'] + p['cancelled']} skipped/cancelled", "magenta"))
    head = Text(f"{p['finished']}/{p['total']} tasks  {_percent(p)}%  "
                f"elapsed {elapsed:.1f}s  ETA {_fmt_eta(p.get('eta_seconds'))}")
    running = Text("running: " + ", ".join(p.get("running_nodes", [])[:8]), style="cyan") \
        if p.get("running_nodes") else Text("")
    return Group(bar, head, counts, running)


class LiveProgress:
    """Redraws ``source()`` (a progress dict) a few times a second until stopped."""

    def __init__(self, source: Callable[[], dict[str, Any] | None], enabled: bool,
                 to: Console | None = None) -> None:
        self.source, self.enabled = source, enabled
        self.console = to or console            # ``run --json``: stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _run(self) -> None:
        if not self.console.is_terminal:
            # A transient Live on a pipe or file draws nothing at all: asked for progress
            # there (``--progress``), the user gets a plain line at each tenth instead.
            self._lines()
            return
        with Live(console=self.console, refresh_per_second=8, transient=True) as live:
            moved = _handlers_to(sys.stdout, sys.stderr)
            try:
                while not self._stop.wait(0.125):
                    p = self.source()
                    if p:
                        live.update(render_progress(p, time.monotonic() - self._t0))
            finally:
                for handler, stream in moved:
                    handler.setStream(stream)
                _unproxy_handlers()

    def _lines(self) -> None:
        shown, stopped = -1, False
        while not stopped:
            stopped = self._stop.wait(0.25)        # one last look once stopped: the end
            p = self.source()
            if not p or not p["total"]:
                continue
            step = int(p["percent"]) // 10
            if step != shown:
                shown = step
                self.console.print(progress_line(p, time.monotonic() - self._t0),
                                   markup=False, highlight=False, soft_wrap=True)


def _handlers_to(out: Any, err: Any) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Point the logging handlers that write to the terminal's stdout or stderr at ``out``
    and ``err`` (``Live``'s proxies, which print above the progress display): holding the
    streams from before, what components logged was drawn over, and the display's old frames
    were left behind around it. The handlers and their streams, to put back."""
    moved = []
    # (stderr's only when it is a terminal: ``2>err.log`` keeps its records, and they are
    # not to go to stdout, which the display's proxies print to)
    err_shown = _isatty(sys.__stderr__)
    for h in _stream_handlers():
        stream = getattr(h, "stream", None)
        target = out if stream in (sys.__stdout__, _real_stdout) else \
            err if err_shown and stream in (sys.__stderr__, _real_stderr) else None
        if target is not None and target is not stream:
            h.setStream(target)
            moved.append((h, stream))
    return moved


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """Every plain ``StreamHandler`` of every logger (not a FileHandler: a subclass)."""
    loggers = [logging.getLogger(), *(x for x in list(logging.Logger.manager.loggerDict.values())
                                      if isinstance(x, logging.Logger))]
    return [h for lg in loggers for h in list(lg.handlers) if type(h) is logging.StreamHandler]


def _unproxy_handlers() -> None:
    """A handler made while the display ran (``logging.StreamHandler()`` in a component) took
    ``Live``'s proxy as its stream, and kept it after: pointed at the file behind it."""
    for h in _stream_handlers():
        real = getattr(getattr(h, "stream", None), "rich_proxied_file", None)
        if real is not None:
            h.setStream(real)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (OSError, ValueError, AttributeError):
        return False


# The streams before any redirection (a ``Live`` replaces ``sys.stdout``/``sys.stderr``).
_real_stdout, _real_stderr = sys.stdout, sys.stderr

def _percent(p: dict[str, Any]) -> int:
    """Whole percent done, rounded down: 10,000 of 10,001 tasks said 100 % while running."""
    return int(p["percent"])


def progress_line(p: dict[str, Any], elapsed: float) -> str:
    """The progress dict as one plain line (for output that is not a terminal)."""
    return (f"progress {_percent(p)}% ({p['finished']}/{p['total']} tasks: "
            f"{p['succeeded']} ok, {p['running']} running, {p['failed']} failed, "
            f"{p['skipped'] + p['cancelled']} skipped/cancelled; elapsed {elapsed:.1f}s, "
            f"ETA {_fmt_eta(p.get('eta_seconds'))})")


def ts(v: float | None) -> str:
    if not v:
        return "—"
    try:
        return datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):     # a row written with an odd time
        return repr(v)


def dur(a: float | None, b: float | None) -> str:
    return f"{b - a:.2f}s" if a and b else "—"


RUNS_COLUMNS = ("run id", "pipeline", "state", "created", "duration")


#: Seconds a RUNNING run's driver may stay silent before ``runs list|show`` call it gone: a
#: live driver beats every 5 s; the margin allows for clocks of other hosts (PostgreSQL) that
#: disagree with this one, as the server's adoption (``TWINGRAPH_ADOPT_AFTER``) does.
SILENT_AFTER = 30.0


def silent_for(rec: Any, now: float | None = None) -> float | None:
    """Seconds since a RUNNING run's driver last wrote its heartbeat, when that is longer than
    a live driver stays silent (``SILENT_AFTER``): its driver is gone (killed, crashed) and the
    run stays RUNNING until someone finishes it. None otherwise."""
    if rec.state.value != "RUNNING" or rec.heartbeat_at is None:
        return None
    silent = (time.time() if now is None else now) - rec.heartbeat_at
    return silent if silent > SILENT_AFTER else None


def finish_hint(rec: Any) -> str:
    """How a run whose driver is gone gets finished, by what started it."""
    source = rec.source or {}
    if source.get("kind") == "dag":
        return ("a DAG run is not resumed: running its DAG file again with `twingraph dynamic "
                "execute` starts a new run that reuses its stored nodes; `twingraph runs cancel "
                f"{rec.run_id}` ends this one")
    if source.get("kind") == "pipeline" or source.get("pipeline_id"):
        return ("a `twingraph server` on this database adopts and finishes it (after "
                "TWINGRAPH_ADOPT_AFTER seconds)")
    return f"finish it with `twingraph run --resume {rec.run_id}`"


def runs_table(runs: Iterable[Any]) -> Table:
    """The runs as a table. Run ids are never cut: their column keeps the width of the longest
    id (``no_wrap``; ``fold`` rather than an ellipsis should the terminal be narrower still)."""
    runs = list(runs)
    t = Table(title="Runs")
    t.add_column(RUNS_COLUMNS[0], no_wrap=True, overflow="fold",
                 min_width=max((len(r.run_id) for r in runs), default=0))
    t.add_column(RUNS_COLUMNS[1], overflow="fold")
    t.add_column(RUNS_COLUMNS[2], no_wrap=True)
    for c in RUNS_COLUMNS[3:]:
        t.add_column(c, no_wrap=True)        # a date is read whole
    for r in runs:
        state = _state(r.state.value)
        if silent_for(r) is not None:
            state.append(_GONE, style="yellow")
        t.add_row(Text(r.run_id), Text(r.pipeline), state, ts(r.created_at),
                  dur(r.started_at, r.ended_at))
    return t


_GONE = " (driver gone)"


def state_label(r: Any) -> str:
    """A run's state as ``runs list`` shows it (a RUNNING run whose driver is gone says so)."""
    return r.state.value + (_GONE if silent_for(r) is not None else "")


def runs_lines(runs: Iterable[Any]) -> list[str]:
    """The runs as plain tab-separated lines (a header, then one run a line, full ids): what
    ``runs list`` prints to a pipe or file, or to a terminal too narrow for the table. A
    RUNNING run whose driver is gone says so, as in the table."""
    lines = ["\t".join(RUNS_COLUMNS)]
    for r in runs:
        state = state_label(r)
        lines.append("\t".join((r.run_id, _field(r.pipeline), state, ts(r.created_at),
                                 dur(r.started_at, r.ended_at))))
    return lines


def _field(text: str) -> str:
    """A name as one tab-separated field: a tab or line break in it (a DAG id may hold one)
    made a row with a field too many, or two rows; escaped as ``\\t``, ``\\n``."""
    if "\t" in text or "\n" in text or "\r" in text or "\\" in text:
        return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return text


def _state(s: str) -> Text:
    color = {"SUCCESS": "green", "FAILED": "red", "RUNNING": "cyan", "CANCELLED": "magenta",
             "SKIPPED": "magenta"}.get(s, "yellow")
    return Text(s, style=color)


def summary_table(tasks: list[Any], limit: int = 30) -> Table:
    """Per component: how many tasks, in which state, memo hits, time spent."""
    by: dict[str, dict[str, Any]] = {}
    for t in tasks:
        row = by.setdefault(t.component, {"n": 0, "ok": 0, "failed": 0, "cancelled": 0,
                                          "skipped": 0, "other": 0, "hits": 0, "time": 0.0})
        row["n"] += 1
        s = t.state.value
        # (a cancelled task was counted as skipped)
        row[{"SUCCESS": "ok", "FAILED": "failed", "CANCELLED": "cancelled",
             "SKIPPED": "skipped"}.get(s, "other")] += 1
        if t.cache_status in ("hit", "resumed"):
            row["hits"] += 1
        if t.started_at and t.ended_at and t.cache_status not in ("hit", "resumed"):
            row["time"] += t.ended_at - t.started_at
    table = Table(title="Summary", caption="time: the tasks' times added up")
    # short headers: the names get the width (an 80-column terminal cut them to "process_c…");
    # cancelled and skipped only when some task was (a column each fit no 80-column terminal)
    rows = list(by.items())
    if len(rows) > limit:          # the rest in one row: the totals still add up
        rest = {k: sum(r[k] for _, r in rows[limit - 1:]) for k in rows[0][1]}
        rows = rows[:limit - 1] + [(f"… {len(rows) - limit + 1} more components", rest)]
    cells: dict[str, Callable[[dict[str, Any]], str]] = {
        "tasks": lambda r: str(r["n"]), "ok": lambda r: str(r["ok"]),
        "failed": lambda r: str(r["failed"]),
        "cancelled": lambda r: str(r["cancelled"] + r["other"]),
        "skipped": lambda r: str(r["skipped"]), "hits": lambda r: str(r["hits"]),
        "time": lambda r: f"{r['time']:.2f}s"}
    if not any(r["cancelled"] or r["other"] for _, r in rows):
        del cells["cancelled"]
    if not any(r["skipped"] for _, r in rows):
        del cells["skipped"]
    # a name too long for the terminal folds onto more lines: cut to "process_c…", two
    # components were one
    table.add_column("component", overflow="fold",
                     min_width=min(20, max((len(k) for k in by), default=9)))
    for c in cells:
        table.add_column(c, justify="right", overflow="ellipsis")
    for name, r in rows:
        table.add_row(Text(name), *(cell(r) for cell in cells.values()))
    return table


def shown_tasks(tasks: list[Any], limit: int) -> list[Any]:
    """The tasks ``runs show`` lists when a run has more than ``limit``: the failed ones first
    (a cut must not hide why the run failed), then the first others, all in their order."""
    if len(tasks) <= limit:
        return tasks
    failed = [t for t in tasks if t.state.value == "FAILED"][:limit]
    others = [t for t in tasks if t.state.value != "FAILED"][:limit - len(failed)]
    keep = {id(t) for t in failed + others}
    return [t for t in tasks if id(t) in keep]


def tasks_table(shown: list[Any], total: int | None = None,
                width: int | None = None) -> RenderableType:
    """The tasks ``shown``, of ``total`` (when some were left out, the title says so).

    In a terminal narrower than the table (``width``), a compact layout: no column lines, the
    component column left out when every node id names its component (``load_data-0``), the
    short columns (state, cache, attempts, duration) never folded, and the errors (and
    labels) under the table, one line each, not in a column: at 80 columns the headers
    folded mid-word ("componen|t", "duratio|n") and every row took five lines; an error
    column squeezed to one character or cut off at the edge lost the reason."""
    total = len(shown) if total is None else total
    title = f"Tasks ({total})" if total == len(shown) else f"Tasks ({len(shown)} of {total} shown)"
    labelled = any((task.inputs or {}).get("labels") for task in shown)
    full = _tasks_table(shown, title, labelled, compact=False)
    if width is None or Console(width=UNWRAPPED).measure(full).maximum <= width:
        return full
    table = _tasks_table(shown, title, labelled, compact=True)
    notes = [Text.assemble((task.node_id, "bold"), ": ", (_cut(task.error, 300), "red"))
             for task in shown if task.error]
    if labelled:
        notes += [Text.assemble((task.node_id, "bold"), " labels: ", _labels(task))
                  for task in shown if (task.inputs or {}).get("labels")]
    return Group(table, *notes) if notes else table


def _cut(text: str, n: int) -> str:
    """``text`` up to ``n`` characters, with an ellipsis when it was longer."""
    return text if len(text) <= n else text[:n - 1] + "…"


def _labels(task: Any) -> str:
    labels = (task.inputs or {}).get("labels") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _tasks_table(shown: list[Any], title: str, labelled: bool, *, compact: bool) -> Table:
    # compact: the component under the node id when the id does not name it; no column
    t = Table(title=title, box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
              pad_edge=not compact, show_edge=not compact, collapse_padding=compact)
    short = {"state", "cache", "tries", "time"} if compact else set()
    widest = max((len(task.node_id) for task in shown), default=4)
    # a short column is as wide as its header and its longest cell, never less
    least = {"node": min(widest, 24), "state": 9, "cache": 5, "tries": 5, "time": 7} \
        if compact else {}
    wide = not compact        # errors and labels: in columns, or under the compact table
    names = ("node", "state", "cache", "why", "tries", "time") if compact else (
        "node", "component", "state", "cache", "why", "attempts", "duration", "error",
        *(("labels",) if labelled else ()))
    for c in names:
        t.add_column(c, overflow="fold", no_wrap=c in short,
                     min_width=least.get(c),
                     justify="right" if compact and c in ("tries", "time") else "left")
    for task in shown:
        node = Text(task.node_id)
        if compact and not task.node_id.startswith(f"{task.component}-"):
            node.append(f"\n{task.component}", style="dim")
        row: list[str | Text] = [
            node, *(() if compact else (Text(task.component),)),
            _state(task.state.value), Text(task.cache_status or "—"),
            Text(task.cache_reason or ""), str(task.attempts),
            dur(task.started_at, task.ended_at),
            *((Text(_cut(task.error or "", 120)),) if wide else ())]
        if labelled and wide:
            row.append(Text(_labels(task)))
        t.add_row(*row)
    return t
