"""The documented pipeline: load -> process chunks in parallel -> aggregate.

    twingraph run examples/quickstart.py --param n_chunks=8

Run it twice: the second run reuses every stored result (see `twingraph runs show RUN_ID`).
"""
import time

from twingraph import component, pipeline


@component(retry_policy={"max_attempts": 3, "backoff": "exponential", "initial_delay": 0.1})
def load_data(source: str, n_chunks: int = 8) -> dict:
    rows = list(range(n_chunks * 100))
    return {"chunks": [rows[i::n_chunks] for i in range(n_chunks)], "source": source}


@component(timeout=60)
def process_chunk(data: list) -> dict:
    time.sleep(0.25)                      # pretend to work: chunks run in parallel
    return {"data": sum(x * x for x in data)}


@component
def aggregate_results(results: list) -> dict:
    return {"total": sum(results), "chunks": len(results)}


@pipeline(name="data_processing_pipeline", max_parallel=10, error_handler="fail")
def process_pipeline(source: str = "memory://numbers", n_chunks: int = 8):
    raw_data = load_data(source=source, n_chunks=n_chunks)
    results = []
    for chunk in raw_data["outputs"]["chunks"]:
        results.append(process_chunk(data=chunk, parent_hash=raw_data["hash"]))
    return aggregate_results(results=[r["outputs"]["data"] for r in results],
                             parent_hashes=[r["hash"] for r in results])


if __name__ == "__main__":
    print(process_pipeline()["outputs"])
