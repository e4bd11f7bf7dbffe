"""The job graph: frozen definitions of what the user built, before anything runs.

Each :class:`Transformation` is one node. ``source``, ``operator`` (a one-input operator,
``keyed`` when ``key_selector`` is set: its input is partitioned by key group) and ``sink`` nodes
become runtime operators; ``union`` and ``side`` (a side output of its input) nodes are virtual:
the runtime resolves them into edges. ``uid`` names the node's state in checkpoints; it defaults
to the node's kind and position in the graph, so the same program maps to the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twingraph.stream.functions import OutputTag
from twingraph.stream.watermarks import WatermarkStrategy


@dataclass(frozen=True)
class Transformation:
    id: int
    kind: str  # source | operator | sink | union | side
    name: str
    inputs: tuple[int, ...] = ()
    parallelism: int | None = None
    uid: str | None = None
    # source
    source: Any = None
    watermark_strategy: WatermarkStrategy | None = None
    timestamp_assigner: Callable[[Any], int] | None = None
    max_source_parallelism: int | None = None
    # operator: factory(uid) -> runtime Operator
    operator: Callable[[str], Any] | None = None
    key_selector: Callable[[Any], Any] | None = None
    # sink
    sink: Any = None
    # side
    tag: OutputTag | None = None

    @property
    def state_uid(self) -> str:
        return self.uid or f"{self.kind}-{self.id}"


@dataclass(frozen=True)
class CheckpointConfig:
    interval_ms: int | None = None
    directory: str | None = None
    retained: int = 3
    fsync: bool = True


@dataclass(frozen=True)
class JobGraph:
    name: str
    transformations: tuple[Transformation, ...]
    parallelism: int = 1
    max_parallelism: int = 128
    checkpoint: CheckpointConfig = CheckpointConfig()
    state_backend: str = "memory"
    state_dir: str | None = None
    batch_size: int = 1000
