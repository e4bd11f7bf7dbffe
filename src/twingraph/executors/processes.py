"""A pool of worker processes that run one job at a time each, so one job can be killed.

Each worker is a 'spawn'ed Python process connected by a pipe (started without re-running the
user's ``__main__``: see ``_start_without_main``). The parent sends a cloudpickled
(fn, args, kwargs), its large buffers in files the worker maps (``bulk``: the same for a
result coming back); the worker sends back frames: ``L`` + a task log record (one per record the
task logs through ``twingraph.get_logger()``, sent as it is emitted, so a task killed later keeps
its logs) and finally ``R`` + ``(ok, payload)``. A reader thread per busy worker waits for them. ``kill(job)`` SIGKILLs the worker running it; the pool replaces workers on
demand. Exceptions that cannot be pickled come back as ``NodeExecutionError`` carrying the
original class name (so retry policies still match by name) and the traceback text.

A pool made with ``memory_limit`` (bytes) caps each worker's address space: the worker measures
its own size once booted (~100 MiB: Python, TwinGraph) and sets ``RLIMIT_AS`` to that plus the
limit, so the kernel refuses the allocation that would pass it and the task gets a
``MemoryError`` instead of the machine's OOM killer taking the driving process (decision 0076).
Why an rlimit and not a cgroup: it needs no privileges, no cgroup delegation (containers rarely
give one) and no polling that a fast allocation could outrun; its cost is that it counts address
space, not resident memory (thread stacks and malloc arenas count). Such a task fails with
``MemoryLimitExceeded`` naming its node and the limit, and its worker is replaced rather than
reused (a ``MemoryError`` can leave a library's state half-built). The workers of a limited pool
also volunteer to the OOM killer (``oom_score_adj`` 1000), so should the machine run short all
the same, a worker goes first, not the server.
"""

from __future__ import annotations

import copyreg
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import linecache
import logging
import multiprocessing as mp
import os
import pickle
import re
import signal
import sys
import sysconfig
import threading
import time
import traceback
import types
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import cloudpickle

from twingraph.core.codeversion import code_modules, is_lib_path, text_digest

from twingraph.core.logtext import LOGGER_NAME, message_of, said
from twingraph.core.placement import mark_worker_process
from twingraph.errors import (ConfigurationError, MemoryLimitExceeded, NodeExecutionError,
                              remote_traceback)
from twingraph.executors import bulk
from twingraph.executors.local import JobOutcome
from twingraph.ports import Job, Outcome


log = logging.getLogger("twingraph.executors")


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def memory_limit_supported() -> bool:
    """Whether this platform enforces ``RLIMIT_AS`` (Linux does; macOS accepts and ignores it,
    Windows has no ``resource`` module)."""
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        import resource
    except ImportError:
        return False
    return hasattr(resource, "RLIMIT_AS")


def _address_space() -> int:
    """This process's virtual size in bytes (``VmSize``), 0 if it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def _limit_memory(limit: int) -> None:
    """In the child, once booted: cap the address space at its current size plus ``limit``,
    and be the OOM killer's first choice. glibc reserves 64 MiB of address space per malloc
    arena, up to 8 per core, for a task's threads: at most 2 here, so that the limit is spent
    on memory the task uses (8 threads that allocate: +133 MiB instead of +734 MiB)."""
    import ctypes
    import resource
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    except (AttributeError, OSError):        # not glibc: its allocator has its own rules
        pass
    cap = _address_space() + limit
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def _is_memory_error(error: Any) -> bool:
    """The task ran out of memory: a ``MemoryError``, or one that came back by class name (it
    did not pickle, or the result could not be pickled for lack of memory)."""
    return isinstance(error, MemoryError) or getattr(error, "error_type", None) == "MemoryError"


class _Forward(logging.Handler):
    """In the child: sends each task log record to the parent as an ``L`` frame. ``pipe_lock``
    keeps frames whole: a task may log from several threads while its result is sent.

    Whose record it is (``_owner_now``): the running task's if it comes from the thread that
    runs tasks, from a thread started (directly or through others) while that task ran, or from
    a pool thread running an item that task submitted (``_tag_threads``); a thread of unknown
    origin (made in C) counts as the running task's. One from a thread an earlier task left
    running, or any record while the worker is idle, is nobody's: dropped, as in the driver,
    where a finished task's threads are not recorded either. The check and the send hold
    ``pipe_lock``, as do the ``A`` and ``R`` frames around a task and the change of
    ``task``: no frame of a task comes before its ``A`` or after its ``R``."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn
        self.pipe_lock = threading.Lock()
        self.task = 0                # the number of the task running now (from 1); 0: idle
        self.runner = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            frame = b"L" + pickle.dumps((record.created, record.levelname.lower(),
                                         message_of(record)))
            with self.pipe_lock:
                if self.task and self._owner_now() == self.task:
                    self.conn.send_bytes(frame)
        except Exception:  # noqa: BLE001 - logging must never fail the task
            pass

    def _owner_now(self) -> int | None:
        """The task the calling thread works for (``None``: unknown, taken as the current)."""
        if threading.get_ident() == self.runner:
            return self.task
        me = threading.current_thread()
        if me.name == SHARED_LOOP_THREAD:
            # the loop ``async def`` task bodies share (``engine.awaiting``): started by the
            # first task that awaited, it runs the coroutine of whichever task runs now
            return self.task
        owner = getattr(me, _TASK_ATTR, None)
        return self.task if owner is None else owner


_TASK_ATTR = "_twingraph_task"
#: The name of ``engine.awaiting``'s shared loop thread (kept in step with it).
SHARED_LOOP_THREAD = "twingraph-aio"


def _tag_threads(forward: _Forward) -> None:
    """In the child: each thread remembers the task it was started for (the task running
    then, or its starter's task, for a thread started by another thread), and a thread of a
    ``concurrent.futures`` pool works, for each item, for the task that submitted it (a pool
    made by one task and used by the next: its threads' records are the next task's)."""
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Thread.start

    def tagged_start(self: threading.Thread) -> None:
        setattr(self, _TASK_ATTR, forward._owner_now())
        start(self)
    threading.Thread.start = tagged_start       # type: ignore[method-assign]

    submit = ThreadPoolExecutor.submit

    def tagged_submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any,
                      **kwargs: Any) -> Any:
        owner = forward._owner_now()

        def run(*a: Any, **k: Any) -> Any:
            me = threading.current_thread()
            before = getattr(me, _TASK_ATTR, None)
            setattr(me, _TASK_ATTR, owner)
            try:
                return fn(*a, **k)
            finally:
                setattr(me, _TASK_ATTR, before)
        return submit(self, run, *args, **kwargs)
    ThreadPoolExecutor.submit = tagged_submit   # type: ignore[method-assign,assignment]


def _watch_parent(parent: int, directory: str | None = None) -> None:
    """In the child: end this worker when the process that drives it is gone (a driver killed
    with SIGKILL cannot stop its workers; their tasks would run on, unrecorded, and run again
    when the run is resumed), with the result files it wrote that nobody will read."""
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            bulk.remove_files_of(directory, os.getpid())
            _end_own_group()
            os._exit(1)


#: How often a worker process checks that its driver is still alive.
PARENT_CHECK_SECONDS = 0.5


def _end_own_group() -> None:
    """In the child: kill what the task started (its process group), this worker included."""
    try:
        if os.getpgid(0) == os.getpid():          # the group is this worker's own
            os.killpg(0, signal.SIGKILL)
    except (AttributeError, OSError):
        pass


def _kill_group(w: "_Worker") -> None:
    """Kill worker ``w`` and every process its task started: each worker leads a process
    group of its own (``_worker_main``), so a timeout or a cancel also stops the task's
    children (a shell it ran would otherwise go on, re-parented, after its task was
    reported stopped). A worker still booting has no group yet: only it is killed."""
    pid = w.proc.pid
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (AttributeError, OSError):     # no such group (yet), or not POSIX
            pass
    w.proc.kill()


def _worker_main(conn: Any, parent: int, memory_limit: int | None = None,  # in the child
                 directory: str | None = None, preload: tuple[str, ...] = ()) -> None:
    try:
        os.setsid()            # a process group of its own: killed whole (``_kill_group``)
    except (AttributeError, OSError):
        pass
    threading.Thread(target=_watch_parent, args=(parent, directory), daemon=True,
                     name="twingraph-parent-watch").start()
    mark_worker_process()
    # Started daemonic (the driver's exit ends it), but a task may start processes of its
    # own (a ``multiprocessing.Pool``, a ``ProcessPoolExecutor``): multiprocessing refuses
    # children to a daemonic process. Its own flag, in this process only, says it is not one.
    import multiprocessing
    multiprocessing.current_process().daemon = False
    forward = _Forward(conn)
    _tag_threads(forward)
    task_logger = logging.getLogger(LOGGER_NAME)
    task_logger.setLevel(logging.INFO)
    task_logger.addHandler(forward)
    # Made before the limit: the answers for a task that leaves not even room to say so.
    out_of_memory = bulk.dumps((False, MemoryError(
        "out of memory: not even the answer fit"), ""), None, b"R").data
    inputs_too_big = bulk.dumps((False, MemoryError(
        "its inputs did not fit"), ""), None, b"R").data
    for name in preload:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - the task will say what it misses
            pass
    if memory_limit:
        _limit_memory(memory_limit)       # after the imports: the limit is the task's to use
    sys.meta_path.insert(0, _CODE)
    conn.send_bytes(b"ready")             # booted and imported: jobs' clocks may start now
    tasks_run = 0
    code_error: BaseException | None = None
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        except MemoryError:
            # The task's inputs alone pass the limit. The rest of the message is unread, so
            # this worker cannot go on: it answers, then ends (the pool replaces it).
            conn.send_bytes(inputs_too_big)
            os._exit(1)
        if data[:1] == b"C":              # module texts for the job that follows
            try:
                _CODE.install(pickle.loads(data[1:]))
            except BaseException as exc:  # noqa: BLE001 - the job says so
                code_error = exc
            continue
        with forward.pipe_lock:
            conn.send_bytes(b"A")     # it has the task: from now on, a death is the task's
            tasks_run += 1
            forward.task = tasks_run
        environ = dict(os.environ)
        try:
            cwd: str | None = os.getcwd()
        except OSError:           # a task before removed it
            cwd = None
        try:
            out, caller = _run_one(data, directory, code_error)
        except MemoryError:
            # The task's memory is still held (by a global, say): answer with what was made
            # beforehand and end, rather than die without a word.
            with forward.pipe_lock:
                conn.send_bytes(out_of_memory)
            os._exit(1)
        if caller is not None:    # the driver's, now: what the next task starts from too
            environ, cwd = caller
        _restore(environ, cwd)
        loaded = _CODE.newly_loaded()
        with forward.pipe_lock:   # not in the middle of a log frame from another thread
            try:
                if loaded:            # the user modules it has now, before the answer
                    conn.send_bytes(b"M" + pickle.dumps(loaded))
                conn.send_bytes(out.data)
            except OSError:           # the driver is gone: so is this worker, and its files
                out.discard()
                return
            forward.task = 0          # idle: what its threads log now is nobody's
        # not held while it waits for the next task (an idle worker kept a 100 MB result)
        data, out, code_error = b"", bulk.Packed(b""), None


class _SentLoader(importlib.machinery.SourceFileLoader):  # in the child
    """A module's file as the driver versioned it: its text runs, whatever the file holds now
    (its bytecode cache when the file still holds that text); the rest of a file loader's
    API (``get_data``, resources, ``is_package``) is the file's."""

    def __init__(self, fullname: str, path: str, text: str) -> None:
        super().__init__(fullname, path)
        self.text = text

    def get_source(self, fullname: str) -> str:
        return self.text

    def get_code(self, fullname: str) -> Any:
        try:
            with open(self.path, "rb") as f:
                same = importlib.util.decode_source(f.read()) == self.text
        except (OSError, SyntaxError, UnicodeDecodeError):
            same = False
        if same:
            return super().get_code(fullname)
        # tracebacks and ``inspect`` read this text, not the file's
        linecache.cache[self.path] = (len(self.text), None, self.text.splitlines(True),
                                      self.path)
        return compile(self.text, self.path, "exec", dont_inherit=True)


class _DriverCode(importlib.abc.MetaPathFinder):  # in the child
    """The user modules' texts as the driver versioned them (``codeversion.code_modules``),
    first on ``sys.meta_path``: an import of one of them here (unpickling a function by
    reference, a module importing another) runs that text, never what the disk or another
    directory on ``sys.path`` holds now. A module is never executed twice here: the worker
    tells the driver the user modules it has loaded and the hash of their text
    (``newly_loaded``), and the driver replaces a worker whose modules are not the ones a job
    needs (``_code_for``)."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[str, str]] = {}      # name -> (file, text)
        self.seen: set[str] = set()                      # modules told of (or not user code)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        got = self.texts.get(name)
        if got is None:
            return None
        file, text = got
        return importlib.util.spec_from_file_location(name, file,
                                                      loader=_SentLoader(name, file, text))

    def install(self, modules: list[tuple[str, str, str]]) -> None:
        """Texts (name, file, text) from the driver, for the imports to come."""
        for name, file, text in modules:
            if name not in sys.modules:
                self.texts[name] = (file, text)

    def newly_loaded(self) -> list[tuple[str, str, str]]:
        """(name, file, sha256 of its text) of each user module loaded since the last call."""
        out: list[tuple[str, str, str]] = []
        for name, module in list(sys.modules.items()):
            if name in self.seen:
                continue
            self.seen.add(name)
            file = getattr(module, "__file__", None)
            if not isinstance(file, str) or not file.endswith(".py") or is_lib_path(file) \
                    or name.split(".")[0] == "twingraph":
                continue
            loader = getattr(getattr(module, "__spec__", None), "loader", None)
            if isinstance(loader, _SentLoader):
                text = loader.text
            else:          # imported from the file: what it holds (read now)
                try:
                    with open(file, "rb") as f:
                        text = importlib.util.decode_source(f.read())
                except (OSError, SyntaxError, UnicodeDecodeError):
                    continue
            out.append((name, file, text_digest(text)))
        return out


_CODE = _DriverCode()


def _restore(environ: dict[str, str], cwd: str | None) -> None:  # in the child
    """Undo what a task changed of the worker's environment and working directory: the next
    task in this worker saw them (a variable it set, the directory it moved to)."""
    if os.environ != environ:
        os.environ.clear()
        os.environ.update(environ)
    if cwd is None:
        return
    try:
        here: str | None = os.getcwd()
    except OSError:     # the task removed the directory it moved to: back all the same
        here = None
    if here != cwd:
        try:
            os.chdir(cwd)
        except OSError:  # the directory to go back to is gone too: stay where it left us
            pass


#: The driver's environment variables and working directory, as a job carries them.
Caller = tuple[dict[str, str], "str | None"]


def _caller() -> Caller:  # in the driver
    try:
        cwd: str | None = os.getcwd()
    except OSError:           # removed under it: the worker stays where it is
        cwd = None
    return dict(os.environ), cwd


def _run_one(data: bytes, directory: str | None = None,  # in the child
             code_error: BaseException | None = None) -> tuple[bulk.Packed, Caller | None]:
    """Run one ``(fn, args, kwargs, caller)`` sent by ``bulk.dumps``; the ``R`` frame of its
    pickled ``(ok, value or exception, traceback text)`` answer (a value's large buffers in a
    file of ``directory``), and the driver's environment and working directory if the job
    carried them (``caller``: set here before the task runs)."""
    caller: Caller | None = None
    try:
        if code_error is not None:       # a module of the task's code failed to load here
            raise code_error
        try:
            fn, args, kwargs, caller = bulk.loads(data, writable=True, directory=directory)
        except bulk.TransferError as exc:     # not the task's own error: the transfer's
            raise NodeExecutionError(
                f"the task's inputs could not be received from the driver: "
                f"{type(exc).__name__}: {exc}", error_type="TransferFailed") from None
        if caller is not None:
            _restore(*caller)
        value = fn(*args, **kwargs)
        reply: tuple[Any, ...] = (True, value, "")
    except BaseException as exc:  # noqa: BLE001 - the task's failure is data
        if isinstance(exc, MemoryError):
            # Its frames still hold what the task allocated: freed before anything else is
            # (under a memory limit, formatting the traceback would not fit otherwise).
            traceback.clear_frames(exc.__traceback__)
        # Its traceback does not pickle: it travels as text (the driver's logs and error
        # events show it, as for a thread task).
        reply = (False, exc, "".join(traceback.format_exception(exc)))
        if not isinstance(exc, MemoryError):
            # The exception pickled apart, with its class names and text beside it: if the
            # driver cannot unpickle it (its class lives in a module only the worker can
            # import), it still has the names (retry policies match them), text, traceback.
            try:
                pickled: bytes | None = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
                cloudpickle.loads(pickled)       # it must at least unpickle here
            except Exception:  # noqa: BLE001 - the driver rebuilds it from its class
                pickled = None
            try:
                reply = (False, None, reply[2], pickled, _class_names(type(exc)),
                         f"{type(exc).__name__}: {said(exc)}", said(exc), _shape_of(exc))
            except Exception:  # noqa: BLE001 - its str() raises: sent as a NodeExecutionError
                pass
    try:
        # a value's large buffers through a file; an error whole, in the frame
        out = bulk.dumps(reply, directory if reply[0] else None, b"R")
        if not reply[0] and len(reply) == 3:
            bulk.loads(out.data[1:], writable=False)  # an exception must also unpickle there
    except Exception as exc:  # noqa: BLE001
        tb = reply[2]
        err = reply[1] if not reply[0] else exc
        out = bulk.dumps((False, NodeExecutionError(
            f"{type(err).__name__}: {said(err)} (result not picklable: {said(exc)})"
            if reply[0] else f"{type(err).__name__}: {said(err)}",
            error_type=type(err).__name__, traceback=tb,
            error_types=_class_names(type(err))), tb), None, b"R")
    return out, caller


#: How many links of a task exception's ``__cause__`` chain travel back from a worker.
CAUSES_MAX = 8


def _shape_of(exc: BaseException) -> tuple[bytes | None, tuple[bytes, ...] | None]:  # child
    """What rebuilds ``exc`` in the driver when it does not unpickle as it is: its ``args``
    and attributes (a constructor that takes more than its message, ``QuotaError(code,
    detail)``, cannot be called again with the one message it passed up), and its
    ``__cause__`` chain (pickling leaves it out: ``raise X from KeyError`` came back without
    it), each link pickled apart, up to ``CAUSES_MAX``. None if it does not pickle both ways."""
    def both_ways(value: Any) -> bytes | None:
        try:
            data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            cloudpickle.loads(data)
            return data
        except Exception:  # noqa: BLE001 - a lock, a socket...: left out
            return None
    attributes = dict(getattr(exc, "__dict__", None) or {})
    for name in copyreg._slotnames(type(exc)):      # type: ignore[attr-defined]
        if hasattr(exc, name):                       # (a class with __slots__)
            attributes[name] = getattr(exc, name)
    state = both_ways((exc.args, attributes))
    causes: list[bytes] = []          # ``raise C from B`` where B was ``raise B from A``...
    cause, seen = exc.__cause__, {id(exc)}
    while cause is not None and id(cause) not in seen and len(causes) < CAUSES_MAX:
        seen.add(id(cause))
        data = both_ways(cause)
        if data is None:               # one that does not pickle ends the chain sent
            break
        causes.append(data)
        cause = cause.__cause__
    return state, tuple(causes) or None


def _exception_from(job: Job, tb: str, pickled: bytes | None, names: tuple[str, ...],
                    text: str, message: str,
                    shape: tuple[bytes | None, tuple[bytes, ...] | None] | None = None
                    ) -> BaseException:
    """A task's exception, sent pickled apart (``_run_one``): itself; else, when it could not
    be pickled (it holds a lock, its constructor takes more than a message) or its class
    cannot be loaded here, an instance of its class as this process has it (a pipeline
    file's class: ``except ValueError`` in the body must catch it, as it would from a thread
    task) with its args and attributes (``_shape_of``), or built from its message; else a
    ``NodeExecutionError`` with its text, class names and traceback. Its ``__cause__`` chain
    comes along as far as it pickled."""
    state, causes = shape if shape is not None else (None, None)
    exc = _rebuilt(pickled, names, message, state)
    if exc is None:
        return NodeExecutionError(text, node_id=job.node_id,
                                  error_type=names[0] if names else "", traceback=tb,
                                  error_types=names)
    link = exc
    for data in causes or ():
        if link.__cause__ is not None:
            break
        try:
            got = cloudpickle.loads(data)
        except Exception:  # noqa: BLE001 - a class only the worker has: the text tells it
            break
        if not isinstance(got, BaseException) or got is exc:
            break
        link.__cause__ = got
        link = got
    return exc


def _rebuilt(pickled: bytes | None, names: tuple[str, ...], message: str,
             state: bytes | None) -> BaseException | None:
    if pickled is not None:
        try:
            exc = cloudpickle.loads(pickled)
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # noqa: BLE001 - e.g. a module only the worker has
            pass
    cls = _loaded_class(names[1]) if len(names) > 1 else None
    if cls is None or not issubclass(cls, BaseException):
        return None
    if state is not None:
        try:       # as unpickling would, without calling its constructor again
            args, attributes = cloudpickle.loads(state)
            made = cls.__new__(cls, *args)
            made.args = tuple(args)
            for name, value in attributes.items():
                object.__setattr__(made, name, value)
            str(made), repr(made)          # usable, or not made this way (a half-made one)
            return made
        except Exception:  # noqa: BLE001 - then from its message
            pass
    try:
        made = cls(message)
        if isinstance(made, BaseException):
            return made
    except Exception:  # noqa: BLE001 - a constructor that wants more: told by name
        pass
    return None


def _loaded_class(dotted: str) -> type | None:
    """The exception class ``module.qualname`` names, from a module this process has already
    loaded (nothing is imported for it)."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None
    return None


_DYNAMIC = '"<dynamic-code>"'
_NOT_USER = tuple({os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                   *(sysconfig.get_paths()[k] + os.sep for k in ("stdlib", "purelib", "platlib"))})
_DYNAMIC_FRAME = re.compile(r'^([ |]*)File "<dynamic-code>", line (\d+), in (\S+)\n',
                            re.MULTILINE)


def with_real_files(job: Job, tb: str) -> str:
    """A worker's traceback text with the files of the task's own code put back: cloudpickle
    sends a function defined in a pipeline file (not importable by the worker) by value and
    names its file ``<dynamic-code>``, so the frames of the user's code said neither file nor
    line text. A frame is matched by its function's name *and* line against the task's
    function and the functions of its file (and their nested code): the code of that name
    whose lines hold the frame's line. Anything else is left as it was (decision 0081)."""
    code: dict[str, list[tuple[str, frozenset[int]]]] = {}
    for obj in (job.fn, *job.args, *job.kwargs.values()):
        try:
            _note_code(obj, code, top=True)
        except Exception:  # noqa: BLE001 - what cannot be looked at names no file
            pass

    def real(m: re.Match[str]) -> str:
        margin, line, name = m.group(1), int(m.group(2)), m.group(3)
        for path, lines in code.get(name, ()):
            if line in lines:
                text = linecache.getline(path, line).strip()
                # the margin kept: an exception group's frames are drawn inside "  | "
                return f'{margin}File "{path}", line {line}, in {name}\n' + \
                    (f"{margin}  {text}\n" if text else "")
        return m.group(0)
    return _DYNAMIC_FRAME.sub(real, tb)


def _note_code(obj: Any, code: dict[str, list[tuple[str, frozenset[int]]]], top: bool = False
               ) -> None:
    """Note the code of ``obj`` (a function, a bound method, a component) and, ``top``, of
    the other functions of its file its globals hold. Objects are looked at by their type and
    with ``getattr_static`` only: a lazy proxy among the globals is never forced."""
    fn = _function_of(obj)
    if fn is None:
        return
    path = fn.__code__.co_filename
    if path.startswith("<") or path.startswith(_NOT_USER):     # TwinGraph's, a library's
        return
    _note_nested(fn.__code__, path, code)
    if top:      # the other functions of its file it may call
        for v in list(fn.__globals__.values()):
            f = _function_of(v)
            if f is not None and f is not fn and f.__code__.co_filename == path:
                _note_nested(f.__code__, path, code)


def _function_of(obj: Any) -> types.FunctionType | None:
    t = type(obj)
    if t is types.FunctionType:
        return obj   # type: ignore[no-any-return]
    if t is types.MethodType:
        return _function_of(obj.__func__)
    inner = inspect.getattr_static(obj, "fn", None)         # a component's function
    return inner if type(inner) is types.FunctionType else None


def _note_nested(c: types.CodeType, path: str,
                 code: dict[str, list[tuple[str, frozenset[int]]]]) -> None:
    lines = {n for _, _, n in c.co_lines() if n is not None}
    if not c.co_name.startswith("<") and len(lines) > 1:
        # a function's ``def`` line is no line of its body a frame can be at (a function of
        # the same name elsewhere whose body line it is must not take its file), unless the
        # body is on it too (``def f(x): raise ...``)
        lines.discard(c.co_firstlineno)
    code.setdefault(c.co_name, []).append((path, frozenset(lines)))
    for k in c.co_consts:
        if type(k) is types.CodeType:
            _note_nested(k, path, code)


def _class_names(cls: type) -> tuple[str, ...]:
    """``cls`` and its bases by name and by ``module.qualname`` (``core.retry.matches``)."""
    return tuple(n for c in cls.__mro__ for n in (c.__name__, f"{c.__module__}.{c.__qualname__}"))


def _end_worker(w: "_Worker", wait: float = 5.0) -> None:
    """Kill worker ``w`` with what its task started, reap it and close its pipe (one that
    died on its own is reaped the same way)."""
    try:
        _kill_group(w)
        w.proc.join(wait)
        w.conn.close()
    except (OSError, ValueError):
        pass


def _deliver_log(job: Job, frame: bytes) -> None:
    """An ``L`` frame from our own worker process: hand the record to the job's listener."""
    on_log = getattr(job, "on_log", None)
    if on_log is not None:
        try:
            created, level, message = pickle.loads(frame[1:])
            on_log(created, level, message)
        except Exception:  # noqa: BLE001 - a bad log frame must not lose the task's result
            pass


_start_lock = threading.Lock()


def _start_without_main(proc: Any) -> None:
    """Start a 'spawn' worker without re-running the user's ``__main__`` in it.

    multiprocessing makes a spawned child import the parent's main script (or ``-m`` module)
    first, so a script that runs a pipeline at top level, without the ``if __name__ ==
    "__main__"`` guard, would run again in every worker and fail there. Workers only run
    cloudpickled tasks (functions from ``__main__`` travel by value), so they do not need it:
    the preparation data is computed without the main-module entries while this worker starts.
    """
    import multiprocessing.spawn as spawn
    with _start_lock:
        original = spawn.get_preparation_data

        def without_main(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data
        spawn.get_preparation_data = without_main
        try:
            proc.start()
        finally:
            spawn.get_preparation_data = original


class _Worker:
    def __init__(self, ctx: Any, memory_limit: int | None = None,
                 directory: str | None = None) -> None:
        parent, child = ctx.Pipe(duplex=True)
        # Under a memory limit, NumPy (when the driver uses it) is imported before the limit is
        # set: a large argument is mapped before it is unpickled, and the import that came
        # after failed with an ImportError instead of the task's MemoryLimitExceeded.
        preload = ("numpy",) if memory_limit and "numpy" in sys.modules else ()
        self.proc = ctx.Process(target=_worker_main,
                                args=(child, os.getpid(), memory_limit, directory, preload),
                                daemon=True, name="twingraph-process-worker")
        _start_without_main(self.proc)
        child.close()
        self.conn = parent
        self.job: Job | None = None
        self.ready = False
        self.caller: Caller | None = None     # the driver's, as this worker last got them
        # module -> (file, sha256 of its text): what this worker has loaded or was sent
        self.code: dict[str, tuple[str, str]] = {}


def _code_for(w: _Worker, job: Job) -> bytes | None | bool:  # in the driver
    """The ``C`` frame of the module texts ``job``'s code version was taken from that ``w``
    does not have yet, None if it has them all, False if it has another text of one of them
    loaded (a reload here, a file edited since it imported it: the worker must be replaced,
    a module is never executed twice in it). Modules cloudpickle sends by value (a
    ``twingraph run`` file) travel with the job already."""
    code = getattr(job, "code", None)
    if code is None:
        return None
    try:
        modules = code_modules(code)
    except Exception:  # noqa: BLE001 - its version was taken already: as it imports then
        log.debug("no module texts for %s", job.node_id, exc_info=True)
        return None
    if not modules:
        return None
    by_value = cloudpickle.list_registry_pickle_by_value()
    new: list[tuple[str, str, str]] = []
    for name, file, text in modules:
        if name in by_value:
            continue
        want = (file, text_digest(text))
        have = w.code.get(name)
        if have is None:
            new.append((name, file, text))
        elif have != want:
            return False
    if not new:
        return None
    for name, file, text in new:
        w.code[name] = (file, text_digest(text))
    return b"C" + pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)


def _receive(w: _Worker) -> bytes:
    """The worker's next frame; ``EOFError`` once it is gone. A process the task forked holds
    the pipe (and the worker's sentinel) open after the worker died: no end of file until it
    exits, if ever. So the worker itself is asked every ``ALIVE_EVERY`` seconds as well."""
    while True:
        if w.conn.poll(ALIVE_EVERY):
            return w.conn.recv_bytes()      # what it sent before it died is read first
        if not w.proc.is_alive() and not w.conn.poll(0):
            raise EOFError("the worker process ended")


#: Seconds between two checks that a busy worker still lives (``_receive``).
ALIVE_EVERY = 0.5


class ProcessPool:
    def __init__(self, size: int, *, memory_limit: int | None = None) -> None:
        """``size`` workers at most, started on demand; ``memory_limit``: bytes of address
        space each worker may add to its own once booted (None: unlimited). Raises
        ``ConfigurationError`` for a limit this platform cannot enforce."""
        if memory_limit is not None:
            if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) \
                    or memory_limit <= 0:
                raise ConfigurationError(f"memory_limit must be a positive number of bytes, "
                                         f"got {memory_limit!r}")
            if not memory_limit_supported():
                raise ConfigurationError("a memory limit for worker processes needs Linux "
                                         "(RLIMIT_AS); set TWINGRAPH_NODE_MEMORY_LIMIT=off here")
        self.size = size
        self.memory_limit = memory_limit
        self._ctx = mp.get_context("spawn")
        self._idle: list[_Worker] = []
        # By identity: (node, fence) repeats across runs. None = its worker is being spawned.
        self._busy: dict[Job, _Worker | None] = {}
        self._waiting: deque[tuple[Job, Callable[[Outcome], None]]] = deque()
        self._shut: set[Job] = set()      # running when the pool was shut down
        self._again: set[Job] = set()     # handed back once from a worker found dead
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False
        self._bulk: bulk.PoolDirectory | None = None
        self._dir: str | None = None
        try:            # large buffers of inputs and results go through files here (``bulk``)
            self._bulk = bulk.PoolDirectory()
        except OSError:
            pass
        else:
            self._dir = self._bulk.path
            weakref.finalize(self, self._bulk.remove)

    def submit(self, job: Job, done: Callable[[Outcome], None]) -> None:
        with self._lock:
            self._waiting.append((job, done))
        self._pump()

    def _pump(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._closed:
                    return
                while self._idle and not self._idle[-1].proc.is_alive():
                    # Died while idle (the OOM killer, an operator): replaced, never handed
                    # a task it could not run.
                    gone = self._idle.pop()
                    self._count -= 1
                    _end_worker(gone, 1)
                if self._idle:
                    w: _Worker | None = self._idle.pop()
                elif self._count < self.size:
                    self._count += 1
                    w = None
                else:
                    return
                job, done = self._waiting.popleft()
                # Busy from this moment (its worker may still be spawning), so kill() finds it.
                self._busy[job] = w
            if w is None:
                w = self._new_worker(job, done)
                if w is None:
                    continue
            with self._lock:
                if job not in self._busy:         # killed while its worker was being made
                    self._idle.append(w)
                    continue
                self._busy[job] = w
            self._start(w, job, done)

    def _new_worker(self, job: Job, done: Callable[[Outcome], None]) -> _Worker | None:
        """A worker for ``job`` (counted already); None if it could not be started: the job
        failed with the reason, and its place is given back."""
        try:
            return _Worker(self._ctx, self.memory_limit, self._dir)
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self._count -= 1
                self._busy.pop(job, None)
            done(JobOutcome(job.node_id, job.fence, False, None, exc, 0.0))
            return None

    def _start(self, w: _Worker, job: Job, done: Callable[[Outcome], None]) -> None:
        known = dict(w.code)           # what it has, if the texts are not sent after all
        code = _code_for(w, job)
        if code is False:
            # It runs other texts of the job's modules: replaced by a new one, which gets
            # them before it imports anything.
            _end_worker(w, 1)
            new = self._new_worker(job, done)
            if new is None:
                self._pump()
                return
            w = new
            with self._lock:
                self._busy[job] = w
            known = {}
            code = _code_for(w, job)
        # The driver's environment and directory as they are now, when they are not what
        # this worker last got: a worker started before an ``os.environ[...] =`` or an
        # ``os.chdir`` ran every later task with the old ones (a thread task saw the new).
        caller = _caller()
        try:
            payload = bulk.dumps((job.fn, job.args, job.kwargs,
                                  None if caller == w.caller else caller), self._dir)
        except Exception as exc:  # noqa: BLE001
            w.code = known
            with self._lock:
                self._busy.pop(job, None)
                self._idle.append(w)
            done(JobOutcome(job.node_id, job.fence, False, None, NodeExecutionError(
                f"cannot send task {job.node_id} to a process: {exc}", node_id=job.node_id)))
            return
        if self.memory_limit and payload.size > self.memory_limit:
            # Its inputs alone pass the limit: no worker could even receive them.
            payload.discard()
            w.code = known
            with self._lock:
                self._busy.pop(job, None)
                self._idle.append(w)
            done(JobOutcome(job.node_id, job.fence, False, None, MemoryLimitExceeded(
                job.node_id, self.memory_limit,
                f"its inputs alone are {_mib(payload.size)}")))
            return
        w.job, w.caller = job, caller
        threading.Thread(target=self._await, args=(w, job, done, payload, code), daemon=True,
                         name=f"twingraph-proc-wait-{job.node_id}").start()

    def _await(self, w: _Worker, job: Job, done: Callable[[Outcome], None],
               payload: bulk.Packed, code: bytes | None = None) -> None:
        try:
            self._await_answer(w, job, done, payload, code)
        finally:
            payload.discard()       # read or not, the inputs' file is done with

    def _await_answer(self, w: _Worker, job: Job, done: Callable[[Outcome], None],
                      payload: bulk.Packed, code: bytes | None = None) -> None:
        t0 = time.perf_counter()
        reused, accepted = w.ready, False
        try:
            if not w.ready:               # a new worker: wait until it has booted
                if w.conn.recv_bytes() != b"ready":
                    raise EOFError("worker did not start")
                w.ready = True
            t0 = time.perf_counter()
            job.started_at = time.monotonic()
            on_start = getattr(job, "on_start", None)
            if on_start is not None:
                on_start()
            try:
                if code is not None:
                    w.conn.send_bytes(code)
                w.conn.send_bytes(payload.data)
            except OSError:
                # The worker stopped reading (its inputs did not fit): it says so before it ends.
                if not w.conn.poll(1):
                    raise
            while True:
                frame = _receive(w)
                if frame[:1] == b"R":
                    break
                if frame == b"A":
                    accepted = True
                    continue
                if frame[:1] == b"M":     # the user modules it has loaded: their texts
                    try:
                        w.code.update((name, (file, digest))
                                      for name, file, digest in pickle.loads(frame[1:]))
                    except Exception:  # noqa: BLE001 - never: it pickled them itself
                        log.debug("a worker's module list did not unpickle", exc_info=True)
                    continue
                if accepted:              # (the worker sends none before: _Forward)
                    _deliver_log(job, frame)
        except (EOFError, OSError, BrokenPipeError):
            # Killed on purpose (abort) or died on its own; a result it was writing is no one's.
            bulk.remove_files_of(self._dir, w.proc.pid)
            with self._lock:
                killed = self._busy.pop(job, None) is None
                shut = job in self._shut
                self._shut.discard(job)
                self._count -= 1
                # A worker that died while idle, too late for the check in ``_pump`` (its
                # exit still under way: is_alive() said yes, the pipe took the task): it
                # never said it had the task, so the task goes to another worker. Once: a
                # task whose inputs alone get a worker killed fails on the second.
                again = not killed and reused and not accepted and job not in self._again
                if again:
                    self._again.add(job)
                    self._waiting.appendleft((job, done))
                else:
                    self._again.discard(job)
            if shut:                       # the pool was shut down under it: say so
                done(JobOutcome(job.node_id, job.fence, False, None, NodeExecutionError(
                    f"task {job.node_id} stopped: its process pool was shut down",
                    node_id=job.node_id, error_type="ExecutorClosed"),
                    time.perf_counter() - t0))
            elif again:
                _end_worker(w, 1)
            elif not killed:
                _kill_group(w)             # what its task started dies with it
                w.proc.join(1)             # reaped: its exit code is known
                exit_code = w.proc.exitcode
                hint = ""
                if self.memory_limit and exit_code == -9:
                    hint = (f"; SIGKILL: the OOM killer may have taken it (its memory limit is "
                            f"{_mib(self.memory_limit)})")
                done(JobOutcome(job.node_id, job.fence, False, None, NodeExecutionError(
                    f"worker process for {job.node_id} died (exit code {exit_code}{hint})",
                    node_id=job.node_id, error_type="WorkerDied"), time.perf_counter() - t0))
            self._pump()
            return
        dt = time.perf_counter() - t0
        tb = ""
        try:                              # the whole answer was read: the worker stays usable
            reply = bulk.loads(memoryview(frame)[1:], writable=False, directory=self._dir)
            del frame
            ok, value, tb = reply[:3]
            if not ok and tb and _DYNAMIC in tb:
                tb = with_real_files(job, tb)
            if not ok and value is None and len(reply) in (7, 8):
                value = _exception_from(job, tb, *reply[3:])
            if not ok and tb:
                remote_traceback(value, tb)
        except bulk.TransferError as exc:     # its files: the transfer failed, not the value
            ok, value = False, NodeExecutionError(
                f"the result of {job.node_id} could not be received from its worker: "
                f"{type(exc).__name__}: {exc}", node_id=job.node_id, error_type="TransferFailed")
        except Exception as exc:  # noqa: BLE001 - e.g. a class missing here: the task failed
            ok, value = False, NodeExecutionError(
                f"the result of {job.node_id} could not be read: {type(exc).__name__}: {exc}",
                node_id=job.node_id, error_type=type(exc).__name__)
        spent = False
        if not ok and self.memory_limit and _is_memory_error(value):
            # Out of its memory: the node fails with the limit named, and this worker is not
            # reused (a library may have been left half-initialised by the MemoryError).
            value = MemoryLimitExceeded(job.node_id, self.memory_limit, str(value))
            if tb:
                remote_traceback(value, tb)
            spent = True
        if not ok:
            # It may have failed before its job was read (a function or argument that does
            # not unpickle there): the worker went back to what it had, so the next job
            # carries the driver's environment and directory again.
            w.caller = None
        with self._lock:
            killed = self._busy.pop(job, None) is None
            self._again.discard(job)
            w.job = None
            if killed or spent:         # killed after it answered, or retired: it is gone
                self._count -= 1
            else:
                self._idle.append(w)
        if spent and not killed:
            self._retire(w)
        if killed:
            self._pump()
            return
        done(JobOutcome(job.node_id, job.fence, ok, value if ok else None,
                        None if ok else value, dt))
        self._pump()

    @staticmethod
    def _retire(w: _Worker) -> None:
        _end_worker(w)

    def kill(self, job: Job) -> bool:
        """Stop ``job``: kill its worker if it runs; drop it if it still waits for one."""
        with self._lock:
            self._again.discard(job)
            if job in self._busy:
                w = self._busy.pop(job)
            else:
                w = None
                self._waiting = deque((j, d) for j, d in self._waiting if j is not job)
        if w is None:                 # never started (queued, or its worker still spawning)
            return False
        _end_worker(w)
        return True

    def shutdown(self) -> None:
        """Stop every worker. A job running or waiting for one ends now, failed (its run hung
        otherwise: a running job's end was taken for an abort, a waiting one never started)."""
        with self._lock:
            self._closed = True
            workers = self._idle + [w for w in self._busy.values() if w is not None]
            self._shut.update(self._busy)
            waiting, self._waiting = list(self._waiting), deque()
            self._idle, self._busy = [], {}
            self._again.clear()
        for w in workers:
            _end_worker(w)
        if self._bulk is not None:
            self._bulk.remove()
        for job, done in waiting:
            done(JobOutcome(job.node_id, job.fence, False, None, NodeExecutionError(
                f"task {job.node_id} did not start: its process pool was shut down",
                node_id=job.node_id, error_type="ExecutorClosed"), 0.0))
