"""Cooperative stops for tasks that run on threads.

Python cannot kill a thread: a thread task that overran its timeout, or whose run was
cancelled, is abandoned (its late result is dropped) but its thread goes on. What can be done
is to tell it. While a task runs on a thread, that thread has a ``Flag`` here; abandoning the
task raises the flag, and the task (or a library call on its behalf) asks ``stop_requested()``
between steps and ends early. An ``async def`` operation is cancelled this way: its event loop
cancels it once the flag is up.

Only the thread a flag is for takes its own flag away (``unwatch``), and a raised flag is an
object the abandoner holds, not a thread id: a later task on a thread with the same id never
sees an earlier task's stop. A task in a worker process is killed instead; one running inline
on the run loop gets a flag when the loop moves on without it.
"""

from __future__ import annotations

import threading


class Flag:
    """One task's stop: ``requested`` once it was abandoned. ``outer``: the flag it was set
    over (a pipeline body run by a task: the task's), which counts too."""
    __slots__ = ("requested", "outer")

    def __init__(self, outer: "Flag | None" = None) -> None:
        self.requested = False
        self.outer = outer

    def request(self) -> None:
        self.requested = True


_flags: dict[int, Flag] = {}       # thread ident -> the flag of the task running on it


def watch(ident: int) -> Flag:
    """A new flag for the task now running on thread ``ident``."""
    flag = _flags[ident] = Flag()
    return flag


def unwatch(ident: int, flag: Flag) -> None:
    """The task ``flag`` was for has returned (or never was handed over): no flag for it."""
    if _flags.get(ident) is flag:
        try:
            del _flags[ident]
        except KeyError:
            pass


def unwatch_self() -> None:
    """The calling thread's task has returned: its flag, if it has one, goes."""
    _flags.pop(threading.get_ident(), None)


def watch_body(ident: int) -> Flag:
    """A flag for the pipeline body running on thread ``ident``, raised when its run stops
    (its timeout, a cancel, a failure under 'fail'): a body busy in its own code when the
    run timed out had no way to know. Set over the flag already there (a body run by a task
    thread: that task's), which still counts; ``unwatch_body`` puts that one back."""
    flag = _flags[ident] = Flag(_flags.get(ident))
    return flag


def unwatch_body(ident: int, flag: Flag) -> None:
    if _flags.get(ident) is flag:
        if flag.outer is None:
            _flags.pop(ident, None)
        else:
            _flags[ident] = flag.outer


def stop_requested() -> bool:
    """Whether the task (or pipeline body) calling this has been abandoned (timed out, or its
    run cancelled or failed) and should end as soon as it can. Always False elsewhere."""
    flag = _flags.get(threading.get_ident())
    while flag is not None:
        if flag.requested:
            return True
        flag = flag.outer
    return False
