"""What this machine has for local tasks that ask for ``resources``, and what running ones hold.

A local task whose component asks for ``resources`` (cpu, memory, gpu) starts only once they
are free, and holds them until it ends; a task that asks for nothing starts as before (only
``max_parallel`` bounds it). One ``LocalResources`` belongs to an engine, so its concurrent runs
share the machine. Capacity is the CPUs this process may run on, the machine's memory and the
NVIDIA GPUs its driver shows (as many as ``CUDA_VISIBLE_DEVICES`` leaves visible), unless
``Engine(local_resources=...)`` or ``$TWINGRAPH_LOCAL_RESOURCES`` (for example
``cpu=8,memory=16Gi,gpu=1``) says otherwise. A component asking for more than the capacity
fails before its run starts (``check``). Decision 0014.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twingraph.core.specs import resource_amounts, validate_resources
from twingraph.errors import ConfigurationError, ResourceUnavailable, ValidationError

_NAMES = ("cpu", "memory", "gpu")


#: One directory per GPU while the NVIDIA kernel driver is loaded (Linux).
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def detected_gpus(driver_dir: str = NVIDIA_GPUS,
                  environ: Mapping[str, str] | None = None) -> int:
    """The NVIDIA GPUs the driver shows (none without the driver, or off Linux), as many as
    ``CUDA_VISIBLE_DEVICES`` leaves visible, read the way CUDA reads it: a list of indexes
    (or ``GPU-``/``MIG-`` ids) that ends at the first entry that is not a device; empty
    means none."""
    try:
        found = sum(1 for entry in os.scandir(driver_dir) if entry.is_dir())
    except OSError:
        found = 0
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is None or not found:
        return found
    count = 0
    for item in visible.split(","):
        item = item.strip()
        if item.startswith(("GPU-", "MIG-")):
            count += 1
        elif item.isdigit() and int(item) < found:
            count += 1
        else:                      # '', '-1', an index past the last device: the list ends
            break
    return min(count, found)


def machine_capacity() -> tuple[int, int, int]:
    """(milli-CPUs this process may use, bytes of physical memory, GPUs ``detected_gpus``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 0
    return cpus * 1000, memory, detected_gpus()


def parse_setting(text: str) -> dict[str, Any]:
    """``"cpu=8,memory=16Gi,gpu=1"`` -> ``{"cpu": "8", "memory": "16Gi", "gpu": 1}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in _NAMES or not value:
            raise ConfigurationError(f"TWINGRAPH_LOCAL_RESOURCES: expected name=value with names "
                                     f"cpu, memory, gpu, got {part!r}")
        out[name] = int(value) if name == "gpu" and value.isdigit() else value
    return out


class LocalResources:
    def __init__(self, capacity: Mapping[str, Any] | None = None) -> None:
        where = "local resources"
        if capacity is None:
            capacity = parse_setting(os.environ.get("TWINGRAPH_LOCAL_RESOURCES", ""))
            where = "TWINGRAPH_LOCAL_RESOURCES"
        try:
            given = resource_amounts(validate_resources(capacity))
        except ValidationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc
        detected = machine_capacity()
        self.capacity = tuple(given[i] if name in capacity else detected[i]
                              for i, name in enumerate(_NAMES))
        self._free = list(self.capacity)
        self._lock = threading.Lock()
        self._waiting: list[Callable[[], None]] = []     # runs holding tasks back, in line

    def check(self, names: Iterable[str], resources: Mapping[str, Any]) -> None:
        """Raise ``ResourceUnavailable`` if ``resources`` ask for more than the capacity."""
        asked = resource_amounts(resources)
        over = [(name, a, c) for name, a, c in zip(_NAMES, asked, self.capacity) if a > c]
        if over:
            raise ResourceUnavailable(names, [(n, _show(n, a), _show(n, c)) for n, a, c in over])

    def take_or_wait(self, amounts: tuple[int, int, int], wake: Callable[[], None]) -> bool:
        """Take ``amounts`` if they are free and no other run waits before the caller;
        otherwise queue ``wake`` (a run's, called when it is the first in line and something
        was given back) and return False. Runs are served in the order they began to wait, so
        a large request is not starved by other runs' small ones."""
        with self._lock:
            queue, free = self._waiting, self._free
            first = not queue or queue[0] == wake
            if first and all(a <= f for a, f in zip(amounts, free)):
                for i, a in enumerate(amounts):
                    free[i] -= a
                nxt = None
                if queue:                   # served: the next run in line may fit what is left
                    queue.pop(0)
                    nxt = queue[0] if queue else None
            else:
                if wake not in queue:
                    queue.append(wake)
                return False
        if nxt is not None:
            nxt()
        return True

    def give_back(self, amounts: tuple[int, int, int]) -> None:
        with self._lock:
            for i, a in enumerate(amounts):
                self._free[i] += a
            first = self._waiting[0] if self._waiting else None
        if first is not None:
            first()

    def forget(self, wake: Callable[[], None]) -> None:
        """A run waits no more (its held tasks started, ended or were cancelled, or it ended):
        out of the line, and the next one in line tries in its place."""
        with self._lock:
            queue = self._waiting
            was_first = bool(queue) and queue[0] == wake
            if wake not in queue:
                return
            queue.remove(wake)
            nxt = queue[0] if was_first and queue else None
        if nxt is not None:
            nxt()

    @property
    def free(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._free)


def _show(name: str, amount: int) -> str:
    if name == "cpu":
        return f"{amount / 1000:g} CPU"
    if name == "memory":
        return f"{amount / 2**30:.2f} GiB"
    return f"{amount} GPU"
