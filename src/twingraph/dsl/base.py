"""``BaseComponent``: a component written as a class (the documented custom-component form).

Subclasses implement ``execute`` and may override ``validate_inputs`` (raise ``ValueError`` on
bad input). An instance is called like a function: inside a pipeline it becomes a task whose
identity includes the class's code and the instance's ``config``; outside it validates and
executes directly. ``component_options`` (a class attribute) takes ``@component`` parameters.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

from twingraph.core.codeversion import code_version
from twingraph.core.specs import ComponentSpec
from twingraph.engine.calls import LINEAGE_KWARGS
from twingraph.engine.engine import current_run


class BaseComponent(abc.ABC):
    component_options: ClassVar[dict[str, Any]] = {}
    name: ClassVar[str | None] = None

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self._spec: ComponentSpec | None = None

    def validate_inputs(self, **kwargs: Any) -> None:
        """Raise ``ValueError`` (or any exception) if the inputs are unacceptable."""

    @abc.abstractmethod
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; return a dict, a NamedTuple or a plain value."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.validate_inputs(**kwargs)
        return self.execute(*args, **kwargs)

    @property
    def spec(self) -> ComponentSpec:
        if self._spec is None:
            cls = type(self)
            draft = ComponentSpec.build(name=cls.name or cls.__name__,
                                        qualname=f"{cls.__module__}:{cls.__qualname__}",
                                        code_version="", **self.component_options)
            cfg = dict(draft.config)
            cfg["__instance__"] = self.config
            self._spec = dataclasses.replace(draft, code_version=code_version(cls), config=cfg)
        return self._spec

    @property
    def platform(self) -> str:
        return self.spec.platform

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run()
        if run is None:
            for k in LINEAGE_KWARGS:
                kwargs.pop(k, None)
            return self.run(*args, **kwargs)
        from twingraph.dsl.component import check_platform
        check_platform(run.engine, [self])
        return run.call(self.spec, self._task, args, kwargs)

    def _task(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)
