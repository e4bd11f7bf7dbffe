"""The CLI's summary table (pure: built from task records, no terminal)."""
from twingraph.cli.display import summary_table
from twingraph.core.records import TaskRecord
from twingraph.core.states import TaskState


def test_components_beyond_the_limit_are_one_row_whose_totals_add_up():
    tasks = [TaskRecord("r", f"c{i}-{j}", f"c{i}", TaskState.SUCCESS, started_at=1.0, ended_at=2.0)
             for i in range(35) for j in range(2)]
    table = summary_table(tasks, limit=30)
    assert table.row_count == 30
    names = list(table.columns[0].cells)
    assert names[-1].plain == "… 6 more components"
    assert list(table.columns[1].cells)[-1] == "12"            # 6 components x 2 tasks
    assert sum(int(c) for c in table.columns[1].cells) == 70


def test_a_short_list_is_shown_whole():
    tasks = [TaskRecord("r", "a-0", "a", TaskState.FAILED)]
    table = summary_table(tasks)
    assert table.row_count == 1 and list(table.columns[2].cells) == ["0"]


def test_a_run_whose_driver_is_silent_is_called_gone_and_told_how_to_finish():
    from twingraph.cli.display import SILENT_AFTER, finish_hint, runs_table, silent_for
    from twingraph.core.records import RunRecord
    from twingraph.core.states import RunState

    now = 1_000_000.0
    live = RunRecord("r1", "p", RunState.RUNNING, heartbeat_at=now - 6)
    # a driver on another host whose clock is 15 s behind this one's: not gone
    skewed = RunRecord("r2", "p", RunState.RUNNING, heartbeat_at=now - 21)
    gone = RunRecord("r3", "p", RunState.RUNNING, heartbeat_at=now - SILENT_AFTER - 5,
                     source={"kind": "python", "file": "x.py"})
    done = RunRecord("r4", "p", RunState.SUCCESS, heartbeat_at=now - 3600)
    assert [silent_for(r, now) for r in (live, skewed, done)] == [None, None, None]
    assert silent_for(gone, now) == SILENT_AFTER + 5
    assert finish_hint(gone) == "finish it with `twingraph run --resume r3`"
    assert "adopts" in finish_hint(RunRecord("r5", "p", RunState.RUNNING, source={
        "kind": "pipeline", "pipeline_id": "pl_1"}))           # a server's run: no file to give
    assert "runs cancel r6" in finish_hint(RunRecord("r6", "p", RunState.RUNNING, source={
        "kind": "dag", "dag_id": "d"}))
    gone.heartbeat_at = 1.0                                     # with the real clock
    cells = [c for col in runs_table([gone, live]).columns for c in col._cells]
    assert any(str(c) == "RUNNING (driver gone)" for c in cells)
    # piped (one tab-separated line a run): the same words, the live run's state plain
    from twingraph.cli.display import runs_lines
    live.heartbeat_at = __import__("time").time()
    states = [line.split("\t")[2] for line in runs_lines([gone, live])[1:]]
    assert states == ["RUNNING (driver gone)", "RUNNING"]


def test_cancelled_and_skipped_tasks_are_counted_apart():
    """A cancelled task was counted under "skipped"."""
    tasks = [TaskRecord("r", "a-0", "a", TaskState.CANCELLED),
             TaskRecord("r", "a-1", "a", TaskState.SKIPPED),
             TaskRecord("r", "a-2", "a", TaskState.SKIPPED)]
    table = summary_table(tasks)
    by = {c.header: list(c.cells) for c in table.columns}
    assert by["cancelled"] == ["1"] and by["skipped"] == ["2"]
    # none of either: no column for them (an 80-column terminal cut the table)
    plain = summary_table([TaskRecord("r", "a-0", "a", TaskState.SUCCESS)])
    assert [c.header for c in plain.columns] == ["component", "tasks", "ok", "failed", "hits",
                                                 "time"]


def test_the_progress_bar_has_its_own_line_and_the_percent_rounds_down():
    from rich.console import Console
    from rich.live_render import LiveRender
    from twingraph.cli.display import progress_line, render_progress
    p = {"total": 10001, "finished": 10000, "succeeded": 10000, "running": 1, "queued": 0,
         "pending": 0, "failed": 0, "skipped": 0, "cancelled": 0,
         "percent": 100.0 * 10000 / 10001, "running_nodes": ["last-0"]}
    console = Console(width=40, force_terminal=True, color_system=None)
    with console.capture() as cap:
        console.print(LiveRender(render_progress(p, 1.0)))
    lines = cap.get().splitlines()
    assert set(lines[0].strip()) <= set("━╸╺ ")            # the bar alone on its line
    assert lines[1].startswith("10000/10001 tasks  99%")
    assert progress_line(p, 1.0).startswith("progress 99% ")


def test_logging_handlers_on_the_terminal_write_through_the_live_display(monkeypatch):
    """A handler made before the display (``logging.basicConfig`` in a pipeline module) held
    the terminal's stderr: what components logged was drawn over by the display. Only when
    stderr is the terminal: ``2>err.log`` keeps its records."""
    import io
    import logging
    from twingraph.cli import display
    monkeypatch.setattr(display, "_isatty", lambda stream: False)
    h0 = logging.StreamHandler(display._real_stderr)
    logging.getLogger("twingraph-test-live-h0").addHandler(h0)
    try:
        moved = display._handlers_to(io.StringIO(), io.StringIO())
        for handler, stream in moved:           # (other tests' handlers on stdout)
            handler.setStream(stream)
        assert h0 not in [handler for handler, _ in moved]
    finally:
        logging.getLogger("twingraph-test-live-h0").removeHandler(h0)
    monkeypatch.setattr(display, "_isatty", lambda stream: True)
    h = logging.StreamHandler(display._real_stderr)
    other = logging.StreamHandler(io.StringIO())          # not the terminal: left alone
    log = logging.getLogger("twingraph-test-live-handlers")
    log.addHandler(h)
    log.addHandler(other)
    try:
        proxy_out, proxy_err = io.StringIO(), io.StringIO()
        moved = display._handlers_to(proxy_out, proxy_err)
        assert h.stream is proxy_err and other.stream is not proxy_err
        for handler, stream in moved:
            handler.setStream(stream)
        assert h.stream is display._real_stderr
    finally:
        log.removeHandler(h)
        log.removeHandler(other)


def _render(table, width):
    import io

    from rich.console import Console
    out = io.StringIO()
    Console(file=out, width=width).print(table)
    return out.getvalue()


def test_runs_show_in_an_80_column_terminal_folds_no_header_and_no_short_cell():
    """At 80 columns every header folded mid-word ("componen|t", "duratio|n") and each row
    took five lines; the compact layout leaves out what the node id already says."""
    from twingraph.cli.display import tasks_table
    tasks = [TaskRecord("r", f"process_chunk-{i}", "process_chunk", TaskState.SUCCESS,
                        cache_status="miss", cache_reason="no stored result (new task)",
                        attempts=1, started_at=1.0, ended_at=1.25) for i in range(3)]
    tasks.append(TaskRecord("r", "aggregate_results-0", "aggregate_results",
                            TaskState.CANCELLED, attempts=2))
    text = _render(tasks_table(tasks, width=80), 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "node" in line)
    for word in ("node", "state", "cache", "why", "tries", "time"):
        assert f" {word}" in f" {header}", header          # whole, on the one header line
    assert "component" not in text and "error" not in header     # nothing to say there
    assert "aggregate_results-0" in text and "CANCELLED" in text   # neither folded
    # a wide terminal keeps the full table
    wide = _render(tasks_table(tasks, width=200), 200)
    assert "component" in wide and "error" in wide


def test_the_compact_layout_keeps_the_component_when_the_node_id_does_not_name_it():
    from twingraph.cli.display import tasks_table
    tasks = [TaskRecord("r", "step", "load_everything_from_the_warehouse", TaskState.FAILED,
                        error="boom " * 10)]
    text = _render(tasks_table(tasks, width=80), 80)
    assert "load_everything_from_the_warehouse" in text.replace("\n", "").replace(" ", "") \
        and "boom" in text


def test_errors_of_the_compact_layout_are_whole_under_the_table():
    """Regression review: at 80 columns the error column was one character wide (a long
    component name) or cut off at the terminal's edge; errors longer than 120 characters
    were cut with no mark."""
    from twingraph.cli.display import tasks_table
    long = "ValueError: chunk 2 has a bad row: " + "x" * 400
    tasks = [TaskRecord("r", f"a_rather_long_node_name-{i}", "a_rather_long_component_name",
                        TaskState.FAILED, cache_status="miss", cache_reason="no stored result",
                        attempts=3, started_at=1.0, ended_at=2.0, error=long)
             for i in range(2)]
    for width in (80, 100):
        text = _render(tasks_table(tasks, width=width), width)
        assert max(len(line) for line in text.splitlines()) <= width
        flat = "".join(text.split())                          # folded lines, joined
        assert "a_rather_long_node_name-1:ValueError:chunk2hasabadrow:" in flat, text
        assert "x" * 200 in flat and "…" in flat              # cut at 300, and says so
    wide = _render(tasks_table(tasks, width=1000), 1000)
    assert "…" in wide and "x" * 300 not in wide
