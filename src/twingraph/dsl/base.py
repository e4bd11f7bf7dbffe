"""``BaseComponent``: a component written as a class (the documented custom-component form).

Subclasses implement ``execute`` and may override ``validate_inputs`` (raise ``ValueError`` on
bad input). An instance is called like a function: inside a pipeline it becomes a task whose
identity includes the class's code and the instance's ``config``; outside it validates and
executes directly. ``component_options`` (a class attribute) takes ``@component`` parameters.

Its ``name`` (never None): a ``name`` the subclass sets as a class attribute, else the name it
was registered under (``register_component('custom_processor', CustomProcessor)``, or an
instance registered itself), else the class name. It is read when the spec is first built.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

from twingraph.core.arguments import parameters_of
from twingraph.core.codeversion import bindings_hold, code_version, version_and_deps
from twingraph.core.instancestate import instance_state as _instance_state
from twingraph.core.specs import ComponentSpec
from twingraph.engine.calls import accepts_lineage, strip_lineage
from twingraph.engine.engine import current_run
from twingraph.registry import registered_components


def resolve_name(cls: type, obj: Any = None) -> str:
    """The name of BaseComponent class ``cls`` (of its instance ``obj``): see the module doc."""
    explicit = inspect.getattr_static(cls, "name", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    registered = registered_components()
    if obj is not None:
        for name, value in registered.items():
            if value is obj:
                return name
    for name, value in registered.items():
        if value is cls:
            return name
    return cls.__name__


_SIGNATURES: dict[type, inspect.Signature] = {}     # BaseComponent class -> its execute's


class _Name:
    """``BaseComponent.name`` unless a subclass sets its own: resolved, on the class or an
    instance (an instance's is its spec's once the spec exists)."""

    def __get__(self, obj: Any, objtype: Any = None) -> str:
        if obj is None:
            return resolve_name(objtype)
        spec = obj.__dict__.get("_spec")
        return spec.name if spec is not None else resolve_name(type(obj), obj)


_OWN = frozenset({"config", "_spec", "_code_only"})


def instance_state(obj: Any) -> dict[str, Any]:
    """``core.instancestate.instance_state`` of a component instance: its attributes other
    than ``config`` (in its key already) and its cached spec; what is not plain data by its
    content hash (``Engine.hash_value``)."""
    from twingraph.engine.engine import Engine
    return _instance_state(obj, _OWN, Engine.hash_value)


class BaseComponent(abc.ABC):
    component_options: ClassVar[dict[str, Any]] = {}
    # Class-level defaults: a subclass whose ``__init__`` does not call ``super().__init__``
    # still works (it failed in a pipeline with "no attribute '_spec'").
    _spec: ComponentSpec | None = None
    _code_only: str | None = None           # the class's version without values (refresh)
    if TYPE_CHECKING:
        name: ClassVar[str]             # a subclass may set it; else see ``resolve_name``
    else:
        name = _Name()

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self._spec: ComponentSpec | None = None

    def validate_inputs(self, **kwargs: Any) -> None:
        """Raise ``ValueError`` (or any exception) if the inputs are unacceptable."""

    @abc.abstractmethod
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; return a dict, a NamedTuple or a plain value."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        given = strip_lineage(kwargs)       # inputs: lineage is not one
        try:
            self.validate_inputs(**(self._by_name(args, given) if args else given))
        except Exception as exc:
            # The same inputs would be refused again: never retried (``RetryPolicy.retries``)
            with contextlib.suppress(Exception):      # (an exception without a __dict__)
                exc.twingraph_retry = False  # type: ignore[attr-defined]
            raise
        return self.execute(*args, **kwargs)

    def _by_name(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The inputs as ``validate_inputs`` takes them, by name: positional ones under the
        names ``execute`` gives them (a declarative node's list of arguments, ``proc([1, 2])``
        for ``execute(self, data)``)."""
        cls = type(self)
        sig = _SIGNATURES.get(cls)
        if sig is None:
            sig = _SIGNATURES[cls] = inspect.signature(cls.execute)
        try:
            bound = sig.bind_partial(self, *args, **kwargs)
        except TypeError as exc:      # what calling ``execute`` would raise, said up front
            raise TypeError(f"{type(self).__name__}.execute: {exc}") from None
        named: dict[str, Any] = {}
        for i, (name, value) in enumerate(bound.arguments.items()):
            if i == 0:
                continue                  # self
            if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[name] = value
        return named

    @property
    def spec(self) -> ComponentSpec:
        """The instance's definition, built at its first use. Its key covers the class's code,
        ``config`` and the instance's other attributes (``instance_state``) as they are then:
        two instances that differ in any of them have keys of their own. Changes made to an
        instance after its first use are not seen (a lazily loaded model, a cache or a counter
        must not change its keys); make a new instance to change a setting."""
        if self._spec is None:
            cls = type(self)
            draft = ComponentSpec.build(name=resolve_name(cls, self),
                                        qualname=f"{cls.__module__}:{cls.__qualname__}",
                                        code_version="", **self.component_options)
            cfg = dict(draft.config)
            cfg["__instance__"] = dict(getattr(self, "config", None) or {})   # as it is now
            attributes = instance_state(self)
            if attributes:
                cfg["__attributes__"] = attributes
            version, deps, _ = version_and_deps(cls)
            spec = dataclasses.replace(draft, code_version=version, config=cfg,
                                       parameters=parameters_of(cls.execute, skip_first=True))
            object.__setattr__(self, "_code_only", code_version(cls, values=False))
            object.__setattr__(self, "_deps", deps)
            # Cached past a frozen dataclass's __setattr__ (it refused: FrozenInstanceError).
            object.__setattr__(self, "_spec", spec)
            return spec
        return self._spec

    def refresh_version(self) -> None:
        """Take the class's code version again (a run starting: ``Pipeline.run_with``), as
        ``Component.refresh_version`` does: an instance made once at module level kept the
        version of its first run for good, and after ``importlib.reload`` of a helper its
        methods call, the old result was a stale hit. Only the code version is taken again:
        ``config`` and the instance's attributes stay as they were read at its first use
        (``spec``)."""
        spec = self._spec
        if spec is None:
            return
        # Compared without the values of mutable defaults and closure cells first, as
        # ``Component.refresh_version`` does: a memo dict a method fills is state, not code.
        code_only = code_version(type(self), values=False)
        if code_only == self._code_only and bindings_hold(getattr(self, "_deps", ())):
            return
        object.__setattr__(self, "_code_only", code_only)
        version, deps, _ = version_and_deps(type(self))
        object.__setattr__(self, "_deps", deps)
        if version != spec.code_version:
            object.__setattr__(self, "_spec", dataclasses.replace(spec, code_version=version))

    @classmethod
    def class_spec(cls) -> ComponentSpec:
        """The class's definition without an instance's ``config``: what a pipeline whose body
        creates the instances is checked (platform) and versioned against before it runs."""
        return ComponentSpec.build(name=resolve_name(cls),
                                   qualname=f"{cls.__module__}:{cls.__qualname__}",
                                   code_version=code_version(cls), **cls.component_options)

    @property
    def platform(self) -> str:
        return self.spec.platform

    @property
    def resources(self) -> Any:
        return self.spec.resources

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run()
        if run is None:
            # The class's options, not ``self.spec``: building the spec here would cost a code
            # version per plain call and fix the name before the instance is registered.
            platform = type(self).component_options.get("platform", "local")
            if platform != "local":
                from twingraph.dsl.component import warn_plain_call
                warn_plain_call(type(self).__name__, platform)
            return self.run(*args, **self._for_execute(kwargs))
        from twingraph.dsl.component import check_platform
        check_platform(run.engine, [self])
        if getattr(self, "_version_run", None) is not run.run_id:   # as Component.__call__
            object.__setattr__(self, "_version_run", run.run_id)
            self.refresh_version()
        return run.call(self.spec, self._task, args, kwargs)

    def _task(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **self._for_execute(kwargs))

    _task.lineage_via_execute = True    # type: ignore[attr-defined]  # engine.calls reads it

    def _for_execute(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` as ``execute`` takes them: with ``parent_hash``/``parent_hashes`` only if
        it declares them (or ``**kwargs``), as a function component gets them (decision 0004);
        they were always taken out."""
        return kwargs if accepts_lineage(type(self).execute) else strip_lineage(kwargs)
