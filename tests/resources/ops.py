"""Operations for declarative DAGs, in the dynamic-scheduler document's convention."""
import asyncio
import time

from twingraph import BaseComponent, component, register_component
from twingraph.engine.dynamic import register_operation

calls: list = []


async def make_numbers(deps, params):
    calls.append("make_numbers")
    return list(range(params["n"]))


def square_all(deps, params):
    calls.append("square_all")
    (xs,) = deps.values()
    return [x * x for x in xs]


def add_all(deps, params):
    calls.append("add_all")
    return sum(sum(v) for v in deps.values()) + params.get("offset", 0)


def explode(deps, params):
    raise RuntimeError("exploded")


def sleepy(deps, params):
    time.sleep(params.get("seconds", 0.5))
    return params.get("seconds")


async def to_bytes(deps, params):
    await asyncio.sleep(0)
    return b"raw:" + str(params["v"]).encode()


for _name, _fn in {"make_numbers": make_numbers, "square_all": square_all, "add_all": add_all,
                   "explode": explode, "sleepy": sleepy, "to_bytes": to_bytes}.items():
    register_operation(_name, _fn)


@component
def scale(xs, factor=2):
    return [x * factor for x in xs]


class Threshold(BaseComponent):
    def validate_inputs(self, **kwargs):
        if "data" not in kwargs:
            raise ValueError("Missing required input: data")

    def execute(self, data, **kwargs):
        t = self.config.get("threshold", 0.5)
        kept = [x for x in data if x > t]
        return {"filtered": kept, "count": len(kept), "threshold": t}


register_component("threshold", Threshold)
