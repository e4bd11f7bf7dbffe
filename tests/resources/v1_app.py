"""Components and pipelines the /api/v1 tests load into a server (``--load``)."""
import time

from twingraph import component, get_logger, pipeline


@component()
def numbers(n: int = 3):
    return list(range(n))


@component()
def total(values, offset: int = 0):
    get_logger().warning("summing %d values", len(values))
    return sum(values) + offset


@component()
def nap(seconds: float = 5.0):
    time.sleep(seconds)
    return seconds


@component()
def pick(result):
    return result


@pipeline(name="sum_numbers", max_parallel=4)
def sum_numbers(n: int = 3, offset: int = 0):
    return total(values=numbers(n=n)['outputs']['result'], offset=offset)['outputs']['result']


@pipeline(name="slow")
def slow(seconds: float = 5.0):
    return nap(seconds=seconds)


@pipeline(name="nightly", schedule="0 2 * * *")
def nightly(logical_date: str = ""):
    return numbers(n=1)
