"""TwinGraph: data pipelines as decorated Python or declarative graphs.

    from twingraph import component, pipeline

Public names are re-exported here; everything else is implementation.
"""

from typing import TYPE_CHECKING, Any

from twingraph.dsl.base import BaseComponent
from twingraph.dsl.streaming import StreamingComponent
from twingraph.dsl.component import Component, component
from twingraph.dsl.pipeline import Pipeline, pipeline
from twingraph.engine.engine import Engine, RunResult
from twingraph.engine.refs import Ref
from twingraph.core.stop import stop_requested
from twingraph.engine.tasklog import get_logger
from twingraph.errors import (ConfigurationError, DynamicSchedulerError, ExecutorUnavailable,
                              NodeExecutionError, NotFoundError, PipelineCancelled,
                              PipelineError, PipelineFailed, PipelineTimeout,
                              MemoryLimitExceeded, ResourceUnavailable, SchedulingError, StorageError, TaskTimeout,
                              TwinGraphError, ValidationError)
from twingraph.registry import register_component, register_error_handler
from twingraph.workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "BaseComponent", "StreamingComponent", "Component", "ConfigurationError", "DynamicSchedulerError", "Engine",
    "ExecutorUnavailable", "NodeExecutionError", "NotFoundError", "Pipeline", "PipelineCancelled",
    "PipelineError", "PipelineFailed", "PipelineTimeout", "Ref", "ResourceUnavailable", "RunResult",
    "SchedulingError",
    "MemoryLimitExceeded", "StorageError", "TaskTimeout", "TwinGraphError", "ValidationError", "Workflow", "component", "get_logger", "pipeline",
    "operation", "register_component", "register_error_handler", "register_operation",
    "stop_requested", "__version__",
]


_LAZY = ("operation", "register_operation")

if TYPE_CHECKING:
    from twingraph.engine.dynamic import operation, register_operation
else:
    def __getattr__(name: str) -> Any:
        """``operation`` and ``register_operation`` (the declarative-DAG registry), imported
        on first use: the dynamic scheduler is not loaded for a plain ``import twingraph``."""
        if name in _LAZY:
            from twingraph.engine import dynamic
            return getattr(dynamic, name)
        raise AttributeError(f"module 'twingraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
