"""Operations for the isolation tests (tests/server/test_dynamic_isolation.py), loaded by the
server with ``--load`` like any user module: registered here, run wherever the server says.

``hog`` and ``count_to`` stand for an operation whose memory grows with a request's
parameters; ``spin`` for one whose running time does; ``where`` tells which process ran it.
"""
import asyncio
import os
import time

from twingraph import BaseComponent, component, pipeline, register_component
from twingraph.engine.dynamic import register_operation

CHUNK = 2**20


def hog(deps, params):
    """Hold ``mib`` MiB, one MiB at a time (the way a growing result does)."""
    held = []
    for _ in range(params["mib"]):
        held.append(bytearray(CHUNK))
    return len(held)


def count_to(deps, params):
    """A list of ``n`` items, built one by one: with ``n`` = 10**12, without bound."""
    return len([i for i in range(params["n"])])


def spin(deps, params):
    """Busy for ``seconds`` (a thread running this cannot be stopped)."""
    end = time.monotonic() + params["seconds"]
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def where(deps, params):
    return os.getpid()


def _double(x):
    return 2 * x


def double_all(deps, params):
    return [_double(x) for v in deps.values() for x in v] + [params.get("extra", 0)]


async def later(deps, params):
    await asyncio.sleep(0)
    return {"v": params["v"], "inputs": sorted(deps)}


for _name, _fn in {"hog": hog, "count_to": count_to, "spin": spin, "where": where,
                   "double_all": double_all, "later": later}.items():
    register_operation(_name, _fn)


@component
def iso_scale(xs, factor=3):
    return [x * factor for x in xs]


class IsoKeep(BaseComponent):
    def execute(self, data, **kwargs):
        limit = self.config.get("above", 0)
        return {"kept": [x for x in data if x > limit]}


register_component("iso_keep", IsoKeep)


@pipeline(name="iso_pipe")
def iso_pipe(n: int = 3):
    return iso_scale(xs=list(range(n)))
