"""Records of the catalog: projects, pipelines and pipeline versions (what the REST faces list).

The engine's run/task records live in ``twingraph.core.records``; these are the store's own,
returned by the methods beyond the ``MetadataStore`` port (``get_pipeline`` and friends).
Times are POSIX seconds, as everywhere in the store.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    id: str
    name: str
    description: str | None = None
    owner: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    id: str
    project_id: str
    project: str                        # project name
    name: str
    definition: dict[str, Any]          # the current version's definition
    current_version: int
    description: str | None = None
    schedule: str | None = None
    tags: list[Any] = field(default_factory=list)     # TwinGraph metadata tags
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class PipelineVersionRecord:
    pipeline_id: str
    version: int
    definition: dict[str, Any]
    source_hash: str | None = None
    created_at: float = 0.0


def new_id(prefix: str) -> str:
    """``proj_…`` / ``pipe_…``: a prefix says what an id names (Tauro spells ids that way)."""
    return f"{prefix}_{uuid.uuid4().hex}"
