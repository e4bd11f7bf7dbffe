"""A pipeline that leaves a marker file per execution, for kill -9 / resume tests."""
import os
import time
import uuid

from twingraph import component, pipeline


@component
def step(i: int, delay: float):
    marks = os.environ["TG_MARKS"]
    with open(os.path.join(marks, f"{i}.{uuid.uuid4().hex}"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(delay)
    return i * i


@component(cache=False)
def total(xs):
    return sum(xs)


@pipeline(name="crashy", max_parallel=2)
def crashy(n: int = 12, delay: float = 0.3):
    parts = [step(i=i, delay=delay) for i in range(n)]
    return total(xs=[p["outputs"]["result"] for p in parts])
