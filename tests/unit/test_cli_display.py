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
