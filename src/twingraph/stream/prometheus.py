"""Prometheus metrics of running stream jobs, named as in the stream-engine document.

- ``records_processed_total{job,task,operator}`` (counter): records that entered each operator.
- ``processing_latency_seconds{job,operator}`` (histogram): source-to-sink delay of the latency
  markers (one every 200 ms per source subtask), observed at each sink.
- ``checkpoint_duration_seconds{job}`` (histogram): trigger to commit, per completed checkpoint.
- ``backpressure_ratio{job,task}`` (gauge): share of scheduler turns the subtask was held back.
- ``watermark_lag_ms{job,task}`` (gauge): processing time minus the subtask's current watermark.
- ``state_size_bytes{job,task,operator}`` (gauge): size of the subtask's state in the last checkpoint.

``task`` is ``<chain name>[<subtask>]``. Values are read from the jobs at scrape time; a
``StreamCollector`` registers in any ``prometheus_client`` registry (the server's included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from twingraph.stream.runtime.job import JobRun
from twingraph.stream.runtime.tasks import SinkOperator
from twingraph.stream.watermarks import MIN_WATERMARK


class StreamCollector(Collector):
    """Collects from the job runs ``runs()`` returns (e.g. ``lambda: [r.client.run for r in manager.jobs()]``)."""

    def __init__(self, runs: Callable[[], Iterable[JobRun]]) -> None:
        self.runs = runs

    def collect(self) -> Iterator[Any]:
        records = CounterMetricFamily("records_processed", "Records that entered each operator",
                                      labels=["job", "task", "operator"])
        latency = HistogramMetricFamily("processing_latency_seconds", "Source-to-sink latency of latency markers",
                                        labels=["job", "operator"])
        ckpt = HistogramMetricFamily("checkpoint_duration_seconds", "Checkpoint duration, trigger to commit",
                                     labels=["job"])
        backpressure = GaugeMetricFamily("backpressure_ratio", "Share of turns held back by full outputs",
                                         labels=["job", "task"])
        lag = GaugeMetricFamily("watermark_lag_ms", "Processing time minus the current watermark",
                                labels=["job", "task"])
        state = GaugeMetricFamily("state_size_bytes", "State size in the last checkpoint",
                                  labels=["job", "task", "operator"])
        for run in self.runs():
            if not hasattr(run, "coordinator"):
                continue  # not built yet
            job, now = run.job_id, run.clock.now_ms()
            for t in run.tasks:
                task = f"{t.name}[{t.subtask}]"
                if t.source is not None:
                    records.add_metric([job, task, t.source_uid], t.records_in)
                for op in t.ops:
                    records.add_metric([job, task, op.uid], op.records_in)
                    size = run.coordinator.state_sizes.get((op.uid, t.subtask))
                    if size is not None:
                        state.add_metric([job, task, op.uid], size)
                    if isinstance(op, SinkOperator) and t.latency.count:
                        latency.add_metric([job, op.uid], t.latency.cumulative(), t.latency.sum)
                backpressure.add_metric([job, task], t.backpressured_turns / t.turns if t.turns else 0.0)
                if t.watermark > MIN_WATERMARK and t.watermark < 2**62:
                    lag.add_metric([job, task], now - t.watermark)
            h = run.coordinator.duration_histogram
            if h.count:
                ckpt.add_metric([job], h.cumulative(), h.sum)
        yield from (records, latency, ckpt, backpressure, lag, state)
