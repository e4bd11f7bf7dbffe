"""``@component``: a function becomes a component.

Inside a running pipeline a call submits a task and returns a future (``Ref``) at once; outside
one it is a plain function call. Parameters are validated at decoration time; the code version
(hash of the source and the user code it calls) is computed at first use, when the module's
other functions exist.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from twingraph.core.arguments import parameters_of
from twingraph.core.codeversion import bindings_hold, code_version, version_and_deps
from twingraph.core.specs import ComponentSpec
from twingraph.engine.calls import LINEAGE_KWARGS, accepts_lineage
from twingraph.core.placement import in_worker_process
from twingraph.engine.engine import current_run, runs_live
from twingraph.engine.heldstate import with_held_state
from twingraph.errors import ExecutorUnavailable, ValidationError
from twingraph.registry import register_component


class Component:
    """A decorated function. ``.spec`` is its frozen definition."""

    def __init__(self, fn: Callable[..., Any], params: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._params = params
        self._spec: ComponentSpec | None = None
        name = params.pop("name", None)
        if name is None:
            name = fn.__name__
        elif not isinstance(name, str) or not name.strip():
            raise ValidationError(f"component name must be a non-empty string, got {name!r}")
        self.name = name
        self._version = params.pop("version", None)      # the code version, if given
        if self._version is not None and (not isinstance(self._version, str) or not self._version):
            raise ValidationError(f"version must be a non-empty string, got {self._version!r}")
        # Validate now (fails at import time); code version later.
        self._draft = ComponentSpec.build(name=name, qualname=_qualname(fn), code_version="",
                                          **params)
        self._accepts_lineage = accepts_lineage(fn)
        self._call_shape = _call_shape(fn)
        self._checked_for: weakref.ref[Any] | None = None    # the engine it was checked for
        self._code_only: str | None = None      # its version without runtime values
        self._deps: Any = ()                    # the bindings its version read
        self._version_run: str | None = None    # the run whose first call refreshed it

    @property
    def spec(self) -> ComponentSpec:
        if self._spec is None:
            version = self._version or self._taken()
            self._code_only = None if self._version else code_version(self.fn, values=False)
            self._spec = dataclasses.replace(self._draft, code_version=version,
                                             parameters=parameters_of(self.fn))
        return self._spec

    def refresh_version(self) -> None:
        """Take the code version again (a run starting: ``Pipeline.run_with``). In one process
        the code a component reaches can change between runs (``importlib.reload`` of a
        helper, a notebook cell run again); the version taken at its first run kept the key,
        and the old result was a stale hit. The spec is replaced only if the version changed
        (the engine's per-spec caches stay warm)."""
        if self._spec is None or self._version is not None:
            return
        # Compared without the values of mutable closure cells and defaults: a list the
        # component fills as it runs is state, not code (it kept resumed runs from hitting).
        code_only = code_version(self.fn, values=False)
        if code_only == self._code_only and bindings_hold(self._deps):
            # (a binding it read rebound, a reload, may hold new data: ``price =
            # make([10, 20, 99])``, by type in this comparison; the version is taken again)
            return
        self._code_only = code_only
        version = self._taken()
        if version != self._spec.code_version:
            self._spec = dataclasses.replace(self._spec, code_version=version)

    def _taken(self) -> str:
        """The code version (with what the function holds: ``with_held_state``), and the
        bindings it read kept for ``refresh_version``."""
        version, self._deps, met = version_and_deps(self.fn)
        return with_held_state(version, self.fn, met)

    @property
    def platform(self) -> str:
        return self._draft.platform

    @property
    def resources(self) -> Any:
        return self._draft.resources

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run()
        if run is None:
            if self.platform != "local":
                warn_plain_call(self.name, self.platform)
            if not self._accepts_lineage:
                for k in LINEAGE_KWARGS:
                    kwargs.pop(k, None)
            return self.fn(*args, **kwargs)
        shape = self._call_shape
        if shape is not None and (len(args) > shape[1] or not shape[0].issuperset(kwargs)):
            self._refuse_call(args, kwargs)
        checked = self._checked_for
        if checked is None or checked() is not run.engine:      # once per engine, not per call
            check_platform(run.engine, [self])
            self._checked_for = weakref.ref(run.engine)
        if self._version_run is not run.run_id:
            # Once per run, at its first call: a component the pipeline's code does not name
            # (``get_component(name)``, a factory, a container) is not among those
            # ``run_with`` refreshes, and after an ``importlib.reload`` of what it calls it
            # kept the old version: the new code's results went under the old key.
            self._version_run = run.run_id
            self.refresh_version()
        return run.call(self.spec, self.fn, args, kwargs)

    def _refuse_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A call the function cannot take, refused where the body makes it (the line its
        traceback shows), not when the task would run, after all the work upstream of it."""
        assert self._call_shape is not None
        names, most = self._call_shape
        if len(args) > most:
            raise TypeError(f"{self.name}() takes {most} positional argument"
                            f"{'' if most == 1 else 's'} but {len(args)} were given")
        bad = next(k for k in kwargs if k not in names)
        raise TypeError(f"{self.name}() got an unexpected keyword argument {bad!r}")

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (by value, for a process task that calls it): without the engine it was
        last checked for, which is this process's (a weak reference cannot be pickled; the
        engine itself was held, and a process task calling a component that had already run
        as a task failed: "cannot pickle '_thread._local' object")."""
        state = dict(self.__dict__)
        state["_checked_for"] = None
        return state

    def __repr__(self) -> str:
        return f"<component {self.name} platform={self.platform}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self, obj)


def _call_shape(fn: Callable[..., Any]) -> tuple[frozenset[str], int | float] | None:
    """The keyword names ``fn`` takes (with the lineage arguments, which a component always
    takes) and how many positional arguments at most; None if it takes any keyword, or its
    signature cannot be read."""
    try:        # what is called: a decorator's wrapper, not the function it wraps
        params = inspect.signature(fn, follow_wrapped=False).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    most: int | float = float("inf") if any(p.kind is p.VAR_POSITIONAL for p in params) else \
        sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names | frozenset(LINEAGE_KWARGS), most


def component(fn: Callable[..., Any] | None = None, *, platform: str = "local",
              docker_image: str | None = None, config: dict[str, Any] | None = None,
              retry_policy: dict[str, Any] | None = None, timeout: float = 300,
              resources: dict[str, Any] | None = None, environment: dict[str, str] | None = None,
              labels: dict[str, str] | None = None, cache: bool = True, executor: str = "auto",
              version: str | None = None, name: str | None = None) -> Any:
    """Turn a function into a component (usable bare, ``@component``, or with parameters).

    ``cache=False`` never reuses a stored result; ``executor`` picks the local mode ('auto',
    'inline', 'thread', 'process'); ``version`` replaces the computed code version.
    """
    params = dict(platform=platform, docker_image=docker_image, config=config,
                  retry_policy=retry_policy, timeout=timeout, resources=resources,
                  environment=environment, labels=labels, cache=cache, executor=executor)

    def wrap(f: Callable[..., Any]) -> Component:
        c = Component(f, dict(params, name=name,
                              **({"version": version} if version is not None else {})))
        register_component(c.name, c)
        return c

    return wrap(fn) if fn is not None else wrap


def warn_plain_call(name: str, platform: str) -> None:
    """Outside a pipeline a component is a plain function call, in this process, whatever its
    platform: say so (never silently) for a component meant to run elsewhere.

    A call made inside a task (on one of the engine's threads, or in a worker process of the
    local executor), or on a thread other than the main one while a run goes on in this
    process (a thread a pipeline body started looks like any other thread) is refused: it
    would run a component meant for another platform here, in its place, which TwinGraph
    never does (``ExecutorUnavailable``). A plain call on the main thread (a unit test, a
    notebook) warns and runs, whatever runs beside it.
    """
    thread = threading.current_thread()
    if in_worker_process() or thread.name.startswith("twingraph-") or (
            runs_live() and thread is not threading.main_thread()):
        raise ExecutorUnavailable(
            platform, [name], where=f"{name} was called inside a running pipeline but not by "
            "its body (by another component, or a thread the body started), so it would run "
            "here")
    warnings.warn(f"component {name!r} (platform {platform!r}) called outside a pipeline runs "
                  "here, in this process, as a plain function call; inside a pipeline it runs "
                  f"on its {platform} executor", RuntimeWarning, stacklevel=3)


def check_platform(engine: Any, components: Any) -> None:
    """Raise ``ExecutorUnavailable`` if any component asks for a platform with no executor,
    or ``ResourceUnavailable`` if a local one asks for more than the engine's machine has."""
    available = engine.platforms
    missing: dict[str, list[str]] = {}
    local = []
    for c in components:
        p = c.platform
        if p not in available:
            missing.setdefault(p, []).append(c.name)
        elif p == "local" and c.resources:
            local.append(c)
    for p, names in missing.items():
        raise ExecutorUnavailable(p, names, available=available)
    pool = getattr(engine, "local_resources", None)
    if pool is not None:
        for c in local:
            pool.check([c.name], c.resources)


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
