"""Components whose behaviour the engine tests observe: failures, retries, sleeps, pids."""
import os
import threading
import time

from twingraph import component

counts: dict = {}
_lock = threading.Lock()


def bump(key):
    with _lock:
        counts[key] = counts.get(key, 0) + 1
        return counts[key]


class TransientError(Exception):
    pass


@component
def fails(x):
    bump("fails")
    raise RuntimeError(f"bad input {x}")


@component
def slow(x, delay=0.3):
    bump(f"slow-{x}")
    time.sleep(delay)
    return x


@component
def quick(x):
    bump(f"quick-{x}")
    return x + 1


@component(retry_policy={"max_attempts": 3, "backoff": "fixed", "initial_delay": 0.01,
                         "exceptions": ["TransientError"]})
def flaky(key, fail_times):
    n = bump(key)
    if n <= fail_times:
        raise TransientError(f"attempt {n}")
    return n


@component(retry_policy={"max_attempts": 3, "backoff": "fixed", "initial_delay": 0.01,
                         "exceptions": ["TransientError"]})
def wrong_kind(key):
    bump(key)
    raise ValueError("not transient")


@component(timeout=0.3)
def hangs_in_thread(x):
    time.sleep(3)
    return x


@component(timeout=0.5, executor="process")
def hangs_in_process(pidfile):
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(30)
    return "never"


@component(executor="process")
def in_process(x):
    return {"pid": os.getpid(), "y": x * 2}


@component(timeout=0.5, retry_policy={"max_attempts": 2, "backoff": "fixed",
                                      "initial_delay": 0.01, "exceptions": ["TimeoutError"]})
def stale_then_fresh(key):
    n = bump(key)
    if n == 1:
        time.sleep(0.7)          # outlives its timeout; reports while attempt 2 still runs
        return "stale"
    time.sleep(0.4)
    return "fresh"


@component(executor="process")
def logs_in_process(n):
    from twingraph import get_logger
    log = get_logger()
    log.info("child %d starts in pid %d", n, os.getpid())

    def side(i):
        for j in range(20):
            log.info("thread %d line %d", i, j)
    threads = [threading.Thread(target=side, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        raise ValueError("inner")
    except ValueError:
        log.exception("caught it")
    return n


@component(timeout=0.6, executor="process")
def logs_then_hangs(n):
    from twingraph import get_logger
    get_logger().warning("about to hang")
    time.sleep(30)
    return n


@component(environment={"TG_TASK_VAR": "from-the-component", "HOME": "/tg-home"})
def reads_environment(x):
    return {"var": os.environ.get("TG_TASK_VAR"), "home": os.environ.get("HOME"),
            "pid": os.getpid()}


# A variable a process environment cannot hold that ``environment=`` still lets through (a lone
# surrogate has no bytes: ``os.environ`` raises UnicodeEncodeError): setting it fails in the
# worker, after TG_LEAKED_VAR, set before it, is already in the worker's environment.
@component(cache=False, environment={"TG_LEAKED_VAR": "from-the-first-task",
                                     "TG_UNSETTABLE": "\ud800"})
def environment_cannot_be_set():
    return "never runs"


@component(cache=False, executor="process")
def reads_leaked_variable():
    return {"var": os.environ.get("TG_LEAKED_VAR"), "pid": os.getpid()}


class StubbornTransient(TransientError):
    """A transient error whose constructor takes two arguments: it does not unpickle (pickle
    calls it with the message alone), so it leaves a worker process by its class names only."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


@component(executor="process", cache=False,
           retry_policy={"max_attempts": 3, "backoff": "fixed", "initial_delay": 0.01,
                         "exceptions": ["TransientError"]})
def stubborn_in_process(marker_dir):
    with open(os.path.join(marker_dir, f"attempt-{len(os.listdir(marker_dir))}"), "w"):
        pass
    if len(os.listdir(marker_dir)) < 2:
        raise StubbornTransient(1, 2)
    return "second attempt"


@component(cache=False, executor="process")
def worker_pid(x):
    """The pid of the worker process that ran it."""
    return os.getpid()


@component(cache=False, executor="process", timeout=1)
def runs_a_slow_tool(marker):
    """Starts an external command that writes ``marker`` after 4 s: past the task's timeout."""
    import subprocess
    subprocess.run(["sh", "-c", f"sleep 4; echo written > {marker}"])
    return marker


@component(cache=False, executor="process",
           retry_policy={"max_attempts": 2, "initial_delay": 0.01, "backoff": "fixed",
                         "exceptions": ["WorkerOnlyError"]})
def raises_a_worker_only_error(moddir):
    """Raises an exception whose class lives in a module only the worker process can import
    (written to ``moddir`` and imported here)."""
    import sys
    with open(os.path.join(moddir, "tg_worker_only.py"), "w") as f:
        f.write("class WorkerOnlyError(Exception):\n    pass\n")
    sys.path.insert(0, moddir)
    import tg_worker_only
    raise tg_worker_only.WorkerOnlyError("the worker's own message")


class Unprintable(Exception):
    """User code's bug: ``__str__`` reads an attribute that was never set."""

    def __str__(self):
        return self.message


@component(cache=False, executor="thread")
def fails_unprintably(x):
    raise Unprintable(x)


@component(cache=False, executor="process")
def fails_unprintably_in_process(x):
    raise Unprintable(x)


@component(cache=False, executor="process")
def sleeps_in_process(x, delay):
    time.sleep(delay)
    return x


@component(cache=False, executor="process")
def changes_worker_state(directory):
    os.environ["TG_LEAKED_BY_A_TASK"] = "1"
    os.chdir(directory)
    return os.getpid()


@component(cache=False, executor="process")
def reads_worker_state():
    return [os.getpid(), os.environ.get("TG_LEAKED_BY_A_TASK"), os.getcwd()]


@component(cache=False, executor="process")
def forks_then_dies(seconds):
    if os.fork() == 0:                  # the child keeps the worker's pipe open, then goes
        time.sleep(seconds)
        os._exit(0)
    os.kill(os.getpid(), 9)


@component(cache=False, executor="process")
def leaves_a_logging_thread(n):
    """Starts a thread that logs after the task has returned."""
    from twingraph import get_logger
    log = get_logger()

    def later():
        time.sleep(0.4)
        log.warning("left over from task %d", n)
    threading.Thread(target=later, daemon=True).start()
    return os.getpid()


@component(cache=False, executor="process")
def waits_quietly(seconds):
    """Logs one line of its own, then waits."""
    from twingraph import get_logger
    get_logger().info("my own line")
    time.sleep(seconds)
    return os.getpid()


_shared_pool = None


def shared_pool():
    """One thread pool per process, made lazily by the first task that asks (a common
    pattern). A plain function: it travels by reference, so its global lives in the worker's
    imported module, across tasks (a component's own body travels by value, with fresh
    globals)."""
    global _shared_pool
    from concurrent.futures import ThreadPoolExecutor
    if _shared_pool is None:
        _shared_pool = ThreadPoolExecutor(2)
    return _shared_pool


@component(cache=False, executor="process")
def logs_through_a_shared_pool(i):
    """Logs from the worker's shared thread pool: the first task in the worker makes it and
    later tasks reuse it."""
    from twingraph import get_logger
    log = get_logger()
    pool = shared_pool()
    for k in range(4):
        pool.submit(log.info, "task %d part %d", i, k).result()
    return os.getpid(), id(pool)
