"""Results that are pickled, not JSON: sets, and instances of classes of this file's own, which
cloudpickle pickles by value when the file is loaded by path (as ``twingraph run FILE.py``
loads it). The producers are not memoized (``cache=False``: they run every time, as a source
does), so their consumers hit only if a producer's result has the same content hash in every
process (tests/unit/test_stable_hashes.py runs it under two hash seeds)."""
import dataclasses

from twingraph import component, pipeline

TAGS = [f"tag{i}" for i in range(24)]


@dataclasses.dataclass
class Basket:
    tags: set
    size: int

    def total(self) -> int:
        return len(self.tags) + self.size


class Left:                 # Left and Right build each other: their definitions name each other
    def __init__(self, n: int) -> None:
        self.n = n

    def other(self) -> "Right":
        return Right(self.n + 1)


class Right:
    def __init__(self, n: int) -> None:
        self.n = n

    def other(self) -> Left:
        return Left(self.n + 1)


@component(cache=False)
def tag_dict(n: int) -> dict:
    return {"tags": set(TAGS[:n]), "frozen": frozenset(TAGS[:n]), "mixed": {n, "n", (n, "n")}}


@component(cache=False)
def basket(n: int) -> Basket:
    return Basket(set(TAGS[:n]), n)


@component(cache=False)
def pair(n: int) -> Left:
    return Left(n)


@component
def count_tags(d: dict) -> int:
    return len(d["tags"]) + len(d["frozen"]) + len(d["mixed"])


@component
def basket_total(b: Basket) -> int:
    return b.total()


@component
def pair_total(p: Left) -> int:
    return p.other().other().n


@pipeline(name="pickled_results")
def pickled_results(n: int = 20):
    return [count_tags(tag_dict(n)["outputs"]), basket_total(basket(n)["outputs"]["result"]),
            pair_total(pair(n)["outputs"]["result"])]
