"""What a task's log record says: the logger components use and the text recorded per record.

Shared by the run loop (tasks on threads or inline) and by worker processes, which forward the
same text to their parent.
"""

from __future__ import annotations

import logging

#: The logger ``twingraph.get_logger()`` returns; its records are recorded with the running task.
LOGGER_NAME = "twingraph.task"


def message_of(record: logging.LogRecord) -> str:
    """A record's message, plus its traceback if it carries one (``storable``)."""
    try:
        msg = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not fail the task
        msg = str(record.msg)
    if record.exc_info:
        msg += "\n" + logging.Formatter().formatException(record.exc_info)
    return storable(msg)


def storable(text: str) -> str:
    """``text`` as every metadata store can hold it: a lone surrogate (a file name that is not
    UTF-8, decoded by ``os.fsdecode``) escaped as ``\\udce9``, a NUL as ``\\x00``. Either
    failed the whole write batch, and with it every run that had records in it (PostgreSQL
    refuses NUL in text; UTF-8 cannot encode a lone surrogate)."""
    if text.isascii():
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00") if "\x00" in text else text


#: The most characters of an error's text or traceback a task, attempt, log line or run keeps
#: (its head and its tail): a task raising a 2 MB message stored it in each of those, once per
#: attempt (10 tasks x 3 attempts made a 210 MB database), and printed it for minutes.
ERROR_TEXT_MAX = 64 * 1024
_TAIL = 16 * 1024


def capped(text: str, most: int = ERROR_TEXT_MAX) -> str:
    """``text``, or its head and tail with how much was cut between them if it is longer
    than ``most`` characters."""
    if len(text) <= most:
        return text
    tail = min(_TAIL, most // 4)
    head = most - tail
    return f"{text[:head]}\n... [{len(text) - head - tail} characters cut] ...\n{text[-tail:]}"


def unstorable(text: str) -> bool:
    """Whether ``text`` is what not every metadata store can hold as it is: a NUL (PostgreSQL
    refuses it) or a lone surrogate (UTF-8 cannot encode it). ``storable`` escapes both."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def said(err: BaseException) -> str:
    """``str(err)``, or what it raised instead of raising it: user code's ``__str__`` may read
    an attribute never set, or return something that is not a string."""
    try:
        text = str(err)
    except Exception as exc:  # noqa: BLE001 - anything str() of user code raises
        return f"<str() of the exception raised {type(exc).__name__}>"
    return text if type(text) is str else repr(text)

