"""A pipeline of slow steps that writes a line per execution to $ADOPT_LOG (the adoption test
counts executions per step across a server crash)."""
import os
import time

from twingraph import component, pipeline


@component()
def step(i: int, prev=None):
    with open(os.environ["ADOPT_LOG"], "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.4)
    return i


@pipeline(name="adoptable", max_parallel=1)
def adoptable(n: int = 8):
    prev = None
    for i in range(n):
        prev = step(i=i, prev=prev)['outputs']['result'] if prev is not None else step(i=i)['outputs']['result']
    return prev
