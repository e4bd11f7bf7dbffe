"""What a task's log record says: the logger components use and the text recorded per record.

Shared by the run loop (tasks on threads or inline) and by worker processes, which forward the
same text to their parent.
"""

from __future__ import annotations

import logging

#: The logger ``twingraph.get_logger()`` returns; its records are recorded with the running task.
LOGGER_NAME = "twingraph.task"


def message_of(record: logging.LogRecord) -> str:
    """A record's message, plus its traceback if it carries one."""
    try:
        msg = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not fail the task
        msg = str(record.msg)
    if record.exc_info:
        msg += "\n" + logging.Formatter().formatException(record.exc_info)
    return msg
