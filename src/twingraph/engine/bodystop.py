"""Stopping a pipeline body that goes on after its run stopped (a timeout, a cancel).

A run that times out or is cancelled cancels its tasks at once, and the body's
``stop_requested()`` turns True (``core.stop``). A body busy in its own code for minutes (a
loop, a computation between component calls) did not see either: the run stayed RUNNING, and
``twingraph run`` went on, until the body returned by itself.

A body still running ``GRACE`` seconds after the stop gets ``RunStopped`` raised in its thread,
as Ctrl-C raises ``KeyboardInterrupt`` in the main thread (CPython's
``PyThreadState_SetAsyncExc``). Two rules keep that safe for the engine:

- it is raised only while the body's thread is in code outside TwinGraph (its stack, seen from
  the top down to the body's call, holds no TwinGraph frame but those marked
  ``passes_through``: the body's wrapper, a nested pipeline's call): a body waiting on a
  future, or a task run inline on its thread, is left to the engine, which ends those itself
  once the run stopped;
- once the body has returned, nothing more is sent, and one sent but not yet raised is taken
  back (``settle``, the first thing the body's caller does when it returns, whatever it raised;
  one raised as ``settle`` is called is caught by the caller, which calls it again).

What this cannot stop: a body blocked in one call into C (``time.sleep``, a socket read) gets
it when that call returns; a body that catches ``BaseException`` and goes on gets it again every
``RESEND`` seconds. Elsewhere than CPython (no ``pythonapi``) the stop stays cooperative.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, TypeVar

from twingraph.errors import RunStopped

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds a body may run on after its run stopped before ``RunStopped`` is raised in it: time
#: for a body that checks ``stop_requested()`` to end by itself.
GRACE = 1.0
#: The stops that end the body this way (a run stopped by a failure under 'fail' lets its body
#: go on: it may be handling that failure).
HARD_STOPS = ("timeout", "cancelled")
#: Seconds between two tries: while the body is in TwinGraph's code, and after one was sent
#: (a body that caught it and went on).
RETRY, RESEND = 0.05, 1.0

# (no argtypes: ``None`` goes as NULL, which takes back an exception sent and not raised yet)
_set_async = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)


_THROUGH: set[CodeType] = set()


def passes_through(fn: F) -> F:
    """Mark ``fn`` as TwinGraph code that only passes a pipeline body through (calls it and
    returns what it returns, or lets what it raises go): ``RunStopped`` may be raised in the
    user code it called (``BodyWatch._in_user_code``)."""
    _THROUGH.add(fn.__code__)
    return fn


class BodyWatch:
    """The body of one run, on thread ``ident``, called from frame ``entry`` (``Engine._run``'s
    own: a pipeline run inside the body has a frame of its own)."""

    __slots__ = ("ident", "entry", "exc", "lock", "live", "sent", "stopper")

    def __init__(self, ident: int, entry: FrameType,
                 exc: type[RunStopped] = RunStopped) -> None:
        self.ident = ident
        self.exc = exc                 # raised in the body (a nested pipeline's: its own)
        self.entry: FrameType | None = entry
        self.lock = threading.Lock()
        self.live = True               # False once the body returned (``settle``)
        self.sent = False              # a RunStopped sent and maybe not raised yet
        self.stopper: threading.Thread | None = None

    def stop_later(self) -> None:
        """The run stopped: from ``GRACE`` seconds on, raise ``RunStopped`` in the body until
        it returns. Called once, from the run's loop."""
        with self.lock:
            if _set_async is None or self.stopper is not None or not self.live:
                return
            self.stopper = threading.Thread(target=self._stop, daemon=True,
                                            name="twingraph-body-stop")
            self.stopper.start()

    def _stop(self) -> None:
        time.sleep(GRACE)              # time to end by itself (``stop_requested()``)
        while True:
            with self.lock:            # (``settle`` takes it too: nothing is sent after it)
                if not self.live:
                    return
                wait = RETRY
                if self._in_user_code():
                    assert _set_async is not None
                    # the class (3.11 raises what it is given as ``raise cls``)
                    self.sent = _set_async(ctypes.c_ulong(self.ident),
                                           ctypes.py_object(self.exc)) == 1
                    wait = RESEND
            time.sleep(wait)

    def _in_user_code(self) -> bool:
        """Whether the body's thread runs code of its own: between the top of its stack and
        the body's call (``entry``), some frame that is not TwinGraph's, and no TwinGraph
        frame but those that only pass the body through (``passes_through``: a nested
        pipeline's call, the body's wrapper)."""
        frame: FrameType | None = sys._current_frames().get(self.ident)
        user = False
        while frame is not None and frame is not self.entry:
            name = frame.f_globals.get("__name__") or ""
            if name == "twingraph" or name.startswith("twingraph."):
                if frame.f_code not in _THROUGH:
                    return False       # the engine's own code, or a call into it
            else:
                user = True
            frame = frame.f_back
        return user and frame is not None      # (None: not under the body's call any more)

    def settle(self) -> bool:
        """The body returned (or raised): nothing more is sent, and a ``RunStopped`` sent but
        not raised yet is taken back. Called on the body's thread; one raised while this runs
        (sent just as the body returned) is caught and this goes on (only this watch's own:
        a run's ``RunStopped`` raised in a nested pipeline's ``settle`` goes on up).
        Returns whether one was caught here."""
        caught = False
        while True:
            try:
                with self.lock:
                    self.live, self.entry = False, None
                    if self.sent:
                        assert _set_async is not None
                        _set_async(ctypes.c_ulong(self.ident), None)   # NULL: taken back
                        self.sent = False
                return caught
            except self.exc as exc:
                if type(exc) is not self.exc:
                    raise
                caught = True
