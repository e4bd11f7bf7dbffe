"""``@pipeline``: a function whose body calls components becomes a runnable, recorded pipeline.

Calling the decorated function runs it on the default engine (embedded: SQLite under
``$TWINGRAPH_HOME``, local execution) and returns its result with every future resolved; a failed
run raises a ``PipelineError``. ``.run(...)`` returns the full ``RunResult`` instead and takes
run options (``no_cache``, ``max_parallel``, ``resume``, ``engine``). Inside another pipeline, a
pipeline call runs its body inline: its tasks join the running pipeline.

``graph_config`` (docs/decisions/0008-graph-config.md): ``lineage=False`` runs record no
DEPENDS_ON data flow; ``export=path`` writes the run's lineage graph as GraphSON when the run
ends, in any state (``export_lineage``; a failed export is a warning, never a run failure).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import logging
import math
import sys
import sysconfig
import time
import types
import uuid
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from twingraph.core.records import LogRecord
from twingraph.core.specs import PipelineSpec
from twingraph.dsl.base import BaseComponent
from twingraph.dsl.component import Component, check_platform
from twingraph.dsl.params import param_text_types, same_value, text_form, typed_params
from twingraph.engine.bodystop import passes_through
from twingraph.engine.engine import Engine, RunResult, current_run
from twingraph.engine.loop import RunOptions
from twingraph.engine.scopes import run_nested
from twingraph.errors import ExecutorUnavailable, NotFoundError, ValidationError
from twingraph.graphson import export_run

log = logging.getLogger("twingraph.lineage")


class Pipeline:
    def __init__(self, fn: Callable[..., Any], spec: PipelineSpec,
                 given: Iterable[str] | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.spec = fn, spec
        self.name = spec.name
        # The settings its decorator was given (``given``: their names; else the ones that
        # differ from the defaults): what applies to its tasks when it runs nested in another
        # pipeline (engine/scopes.py).
        if given is None:
            given = [k for k, default in _DEFAULTS.items() if getattr(spec, k) != default]
        given = set(given)
        if "error_config" in given:
            given.add("error_handler")
        self.nested_settings: dict[str, Any] = {k: getattr(spec, k) for k in _DEFAULTS
                                                if k in given}
        if "error_handler" in self.nested_settings:
            self.nested_settings["error_config"] = spec.error_config

    @passes_through         # a nested pipeline's body: stopped as its run's body is
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run()
        if run is not None:
            _note_inline(run, self)
            if not self.nested_settings:
                return self.fn(*args, **kwargs)
            return run_nested(run, self.name, self.nested_settings, self.fn, args, kwargs)
        # its own arguments, never run options: a parameter named ``max_parallel``,
        # ``no_cache``, ``resume``, ``engine`` or ``on_start`` is the pipeline's
        return self.run_with(args, kwargs).unwrap()

    def run(self, *args: Any, engine: Engine | None = None, no_cache: bool = False,
            max_parallel: int | None = None, resume: str | None = None,
            on_start: Callable[[Any], None] | None = None, **kwargs: Any) -> RunResult:
        """Run the pipeline and return its ``RunResult`` (never raises for a failed run)."""
        return self.run_with(args, kwargs, engine=engine, no_cache=no_cache,
                             max_parallel=max_parallel, resume=resume, on_start=on_start)

    def run_with(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], *,
                 engine: Engine | None = None, no_cache: bool = False,
                 max_parallel: int | None = None, resume: str | None = None,
                 on_start: Callable[[Any], None] | None = None) -> RunResult:
        """``run`` with the pipeline's own arguments apart from the run options, so a parameter
        named like an option (``engine``, ``no_cache``, ``resume``...) is the pipeline's: what
        ``twingraph run --param`` calls (mixed into ``run``'s keywords, it was taken for the
        option or raised ``TypeError``)."""
        if engine is None:
            from twingraph.runtime import default_engine
            engine = default_engine()
        engine.check_process()          # before the registration writes to its stores
        reachable = list(_reachable_components(self.fn, [*args, *kwargs.values()]))
        check_platform(engine, reachable)
        _check_called_inside(engine, reachable)
        for c in reachable:
            if isinstance(c, (Component, BaseComponent)):
                c.refresh_version()
        params = _params(self.fn, args, dict(kwargs), partial=resume is not None)
        kinds = param_text_types(self.fn)
        source = self.source()
        if resume is not None:
            rec = engine.metadata.get_run(resume) if engine.metadata is not None else None
            if rec is None:
                raise NotFoundError(f"run {resume} not found")
            if rec.pipeline != self.name:
                raise ValidationError(f"run {resume} belongs to pipeline {rec.pipeline!r}, "
                                      f"not {self.name!r}")
            given, params = params, dict(rec.params)
            inexact = list((rec.source or {}).get("inexact_params") or ())
            # A value that differs from the recorded one was dropped without a word (the
            # run went on with the recorded one): refused, as ``twingraph run --resume``
            # refuses such a ``--param``.
            as_text = set((rec.source or {}).get("typed_params") or ())
            differ = sorted(k for k in given if k not in inexact
                            and differs_from_record(k, given[k], params, as_text, kinds))
            if differ:
                was = ", ".join(f"{k}={params[k]!r}" if k in params else f"{k} not given"
                                for k in differ)
                raise ValidationError(f"run {resume} was started with {was}: a resumed run "
                                      f"keeps its parameters (start a new run to change them)")
            missing = [n for n in inexact if n not in given]
            if missing:
                star = inspect.signature(self.fn).parameters[missing[0]].kind \
                    is inspect.Parameter.VAR_POSITIONAL
                example = f"run(*{missing[0]}, resume=...)" if star else \
                    f"run(resume=..., {missing[0]}=...)"
                raise ValidationError(
                    f"run {resume} was started with parameters that could not be recorded "
                    f"exactly ({', '.join(f'{n}={params.get(n)}' for n in missing)}): pass "
                    f"them again to resume it, e.g. {example}")
            params.update({n: given[n] for n in inexact})
            # values of text kinds it recorded as their text (a Path, a date) are built again
            params = typed_params(self.fn, params, as_text, where=f"run {resume}'s parameter")
            args, kwargs = _resume_call(self.fn, self.name, resume, params)
            no_cache = bool(no_cache or rec.config.get("no_cache"))    # either asks for it
            if max_parallel is None:
                max_parallel = rec.config.get("max_parallel")
        opts = RunOptions(max_parallel=self.spec.max_parallel if max_parallel is None
                          else max_parallel,
                          error_handler=self.spec.error_handler, timeout=self.spec.timeout,
                          no_cache=no_cache, error_config=self.spec.error_config,
                          lineage=self.spec.lineage)
        version = self.register(engine)
        # The id is chosen here so the lineage export also follows a run that ends in Ctrl-C.
        run_id = resume or uuid.uuid4().hex
        recorded, inexact, typed = _recorded_params(params, kinds)
        if inexact:          # a resume must be given them again (see above)
            source["inexact_params"] = inexact
        if typed:            # recorded as their text: a resume builds them again
            source["typed_params"] = typed
        @passes_through
        def body(run: Any) -> Any:
            return self.fn(*args, **kwargs)

        try:
            result = engine.run(body, pipeline=self.name,
                                params=recorded, options=opts, run_id=run_id,
                                resume=resume is not None, source=source,
                                notifications=self.spec.notifications or None,
                                pipeline_version=version, on_start=on_start)
        except KeyboardInterrupt:       # the run ended CANCELLED and recorded: export it too
            export_lineage(engine, self.spec, run_id)
            raise
        export_lineage(engine, self.spec, run_id)
        return result

    def register(self, engine: Engine) -> int | None:
        """Record this pipeline (and a new version when its code changed) in the catalog."""
        upsert = getattr(engine.metadata, "upsert_pipeline", None)
        if upsert is None:
            return None
        definition = {"kind": "python", "module": self.fn.__module__,
                      "qualname": self.fn.__qualname__, "code_hash": self.code_hash(),
                      "components": sorted(str(c.name) for c in self.components()),
                      "max_parallel": self.spec.max_parallel,
                      "error_handler": self.spec.error_handler, "timeout": self.spec.timeout}
        _, version = upsert(engine.project, self.name, definition, schedule=self.spec.schedule,
                            source_hash=definition["code_hash"])
        return version

    def source(self) -> dict[str, Any]:
        mod = sys.modules.get(self.fn.__module__)
        return {"kind": "python", "module": self.fn.__module__,
                "file": getattr(mod, "__file__", None), "pipeline": self.fn.__qualname__}

    def code_hash(self) -> str:
        h = hashlib.sha256()
        try:
            h.update(inspect.getsource(self.fn).encode())
        except (OSError, TypeError):
            h.update(self.fn.__code__.co_code)
        versions = sorted((str(c.name), c.spec.code_version) for c in self.components())
        for _, version in versions:
            h.update(version.encode())
        return h.hexdigest()[:16]

    def components(self) -> list[Any]:
        """Components the body can reach through its global names (and nested user code)."""
        return list(_reachable_components(self.fn))

    def __repr__(self) -> str:
        return f"<pipeline {self.name}>"


def export_lineage(engine: Engine, spec: PipelineSpec, run_id: str) -> Path | None:
    """Write run ``run_id``'s lineage graph where ``spec.graph_config['export']`` says, once
    the run has ended; returns the path written (None: no export configured, or no such run).

    Never raises: a failure to write is logged, warned (``RuntimeWarning``) and recorded as a
    warning log record of the run; the run's state stays what it was."""
    target = spec.export_path
    if target is None:
        return None
    try:
        if engine.metadata is None:
            raise ValueError("the engine has no metadata store to read the lineage from")
        if engine.metadata.get_run(run_id) is None:     # the run never started
            return None
        return export_run(engine.metadata, run_id, target)
    except Exception as exc:  # noqa: BLE001 - an export must not change the run's outcome
        msg = f"lineage export to {target!r} failed: {type(exc).__name__}: {exc}"
        log.warning("run %s: %s", run_id, msg)
        warnings.warn(f"run {run_id}: {msg}", RuntimeWarning, stacklevel=3)
        try:
            engine.recorder.add(LogRecord(run_id, engine.clock.now(), "warning", msg))
            engine.recorder.flush()
        except Exception:  # noqa: BLE001 - already logged and warned
            pass
        return None


_DEFAULTS: dict[str, Any] = {"max_parallel": 10, "error_handler": "fail", "timeout": 3600.0,
                             "error_config": {}}


def pipeline(fn: Callable[..., Any] | None = None, *, name: str | None = None,
             schedule: str | None = None, max_parallel: int | None = None,
             error_handler: str | None = None, timeout: float | None = None,
             graph_config: dict[str, Any] | None = None, notifications: Any = None,
             error_config: dict[str, Any] | None = None) -> Any:
    """Make ``fn`` a pipeline. ``max_parallel`` (default 10), ``error_handler`` (default
    'fail') and ``timeout`` (default 3600 s): for a run of it; when it is called inside
    another pipeline, the ones given here apply to its own tasks and the others are the
    enclosing pipeline's (engine/scopes.py)."""
    given = [k for k, v in (("max_parallel", max_parallel), ("error_handler", error_handler),
                            ("timeout", timeout), ("error_config", error_config))
             if v is not None]

    def wrap(f: Callable[..., Any]) -> Pipeline:
        body = inspect.unwrap(f)
        kind = "an async def function" if inspect.iscoroutinefunction(body) else \
            "an async generator" if inspect.isasyncgenfunction(body) else \
            "a generator function" if inspect.isgeneratorfunction(body) else None
        if kind is not None:
            # Its call would return a coroutine or generator at once: a run of no tasks,
            # recorded SUCCESS, whose value is an object nobody runs.
            raise ValidationError(
                f"pipeline {getattr(f, '__name__', f)!r} is {kind}: a pipeline body must be "
                "a plain function (its component calls return futures at once and run in "
                "parallel; an async def component is awaited by the engine)")
        spec = PipelineSpec.build(
            name=f.__name__ if name is None else name, schedule=schedule,
            max_parallel=_DEFAULTS["max_parallel"] if max_parallel is None else max_parallel,
            error_handler=_DEFAULTS["error_handler"] if error_handler is None else error_handler,
            timeout=_DEFAULTS["timeout"] if timeout is None else timeout,
            graph_config=graph_config, notifications=notifications, error_config=error_config,
            schedule_validator=_validate_cron)
        return Pipeline(f, spec, given)

    return wrap(fn) if fn is not None else wrap


def _validate_cron(expr: str) -> None:
    """The schedule store's own check (``core.schedule.validate``: five or six fields, one
    that ever fires), at decoration: ``croniter.is_valid`` alone let ``"0 0 31 2 *"`` and
    seven-field expressions through, and ``twingraph server --load`` then exited on them."""
    from twingraph.core.schedule import validate
    try:
        validate("cron", expr)
    except ValidationError as exc:
        raise ValidationError(f"schedule of the pipeline: {exc}") from None


#: ``Pipeline.run``'s own keywords (a call of the pipeline passes every keyword to it).
_RUN_OPTIONS = frozenset({"engine", "no_cache", "max_parallel", "resume", "on_start"})


def _params(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            partial: bool = False) -> dict[str, Any]:
    """The call's arguments by name (``partial``: some may be missing, as in a resume,
    which takes the rest from the run's record)."""
    sig = inspect.signature(fn)
    try:
        bound = sig.bind_partial(*args, **kwargs) if partial else sig.bind(*args, **kwargs)
    except TypeError as exc:
        options = sorted(set(kwargs) & _RUN_OPTIONS - set(sig.parameters))
        one = len(options) == 1
        what = "is a run option: pass it" if one else "are run options: pass them"
        hint = (f" ({', '.join(options)} {what} to {fn.__name__}.run(...), not to a call of "
                f"the pipeline)") if options else ""
        raise ValidationError(f"bad arguments for pipeline {fn.__name__}: {exc}{hint}") from None
    out = dict(bound.arguments)
    if not partial:
        out.update(recorded_defaults(fn, out))
    return out


def recorded_defaults(fn: Callable[..., Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of ``fn``'s parameters that ``given`` does not name, to be recorded with
    a run's params: a resume after the default was edited runs with the value the run started
    with. (One JSON cannot hold exactly is left to the function's default again, not made a
    parameter a resume must be given.)"""
    out: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name not in given and param.default is not inspect.Parameter.empty \
                and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) \
                and _exact_in_json(param.default):
            out[name] = param.default
    return out


def _resume_call(fn: Callable[..., Any], name: str, run_id: str,
                 params: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call of ``fn`` a resumed run's recorded ``params`` make, or ``ValidationError``
    before the run is claimed: a parameter renamed or removed since was dropped without a
    word (the body ran with the new name's default: a wrong result, SUCCESS), and a new
    required one failed the claimed run with a TypeError.

    Params are recorded in two forms: as ``Pipeline.run`` names them (``*args`` and
    ``**kwargs`` under their own names) and as the server calls the function, by keyword
    (``service.runs.call_params``): a name ``fn`` has no parameter for goes to its
    ``**kwargs``, and a schedule's ``logical_date`` is dropped for a function that takes
    neither."""
    sig = inspect.signature(fn)
    bound = inspect.BoundArguments(sig, {n: params[n] for n in sig.parameters if n in params})
    args, kwargs = bound.args, bound.kwargs
    extra = {k: v for k, v in params.items() if k not in sig.parameters}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        kwargs.update(extra)
        extra = {}
    extra.pop("logical_date", None)
    if extra:
        raise ValidationError(
            f"run {run_id} was started with {', '.join(f'{k}={v!r}' for k, v in extra.items())}"
            f", which pipeline {name!r} no longer takes: a resumed run keeps its parameters "
            f"(start a new run)")
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(f"run {run_id} cannot be resumed by pipeline {name!r} as it is "
                              f"now: {exc} (start a new run)") from None
    return args, kwargs


def differs_from_record(name: str, value: Any, recorded: Mapping[str, Any],
                        typed: Collection[str], kinds: Mapping[str, Any]) -> bool:
    """Whether ``value``, given again to resume a run, is not the one the run recorded for
    ``name`` (one recorded as its text, ``typed``, compared as the value it builds:
    ``/data//in.csv`` is ``/data/in.csv``)."""
    if name not in recorded:
        return True
    if name in typed and name in kinds:
        return not same_value(kinds[name], name, recorded[name], value)
    return bool(_recorded_params({name: value}, kinds)[0][name] != recorded[name])


def _recorded_params(params: dict[str, Any], kinds: Mapping[str, Any] | None = None
                     ) -> tuple[dict[str, Any], list[str], list[str]]:
    """The run's parameters as recorded (JSON); the names of those JSON cannot carry exactly
    (a tuple, a set, a dict with int keys, an object...): recorded as their ``repr``, for
    people to read. A resumed run calls the body with the recorded values, so it must be given
    those again: the text in their place would be a different input. Last, the names of
    those recorded as their text (``kinds``: the parameters annotated with a text kind, a
    ``Path`` or a ``date`` given as one), which a resume builds again."""
    out: dict[str, Any] = {}
    inexact: list[str] = []
    typed: list[str] = []
    for k, v in params.items():
        kind = None if kinds is None else kinds.get(k)
        if kind is not None and not _exact_in_json(v):
            text = text_form(kind, v)
            if text is not NotImplemented:
                out[k] = text
                typed.append(k)
                continue
        if _exact_in_json(v):
            out[k] = v
        else:
            out[k] = _shown(v)
            inexact.append(k)
    return out, inexact, typed


def _shown(v: Any) -> str:
    """``repr(v)``, or what it is where ``repr`` fails (an int beyond the str-digits limit)."""
    try:
        return repr(v)
    except ValueError:
        return f"<{type(v).__name__} of {v.bit_length()} bits>" if isinstance(v, int) \
            else f"<{type(v).__name__}>"


def _exact_in_json(v: Any, depth: int = 0) -> bool:
    t = type(v)
    if t is int:                # one JSON can write (beyond 4,300 digits, str() refuses it)
        return v.bit_length() <= 14_000
    if t is str or t is bool or v is None:
        return True
    if t is float:
        return math.isfinite(v)
    if depth > 50:
        return False
    if t is list:
        return all(_exact_in_json(x, depth + 1) for x in v)
    if t is dict:
        return all(type(k) is str and _exact_in_json(x, depth + 1) for k, x in v.items())
    return False


#: Items of one container (dict values, list/tuple/set items) looked at for components.
_CONTAINER_ITEMS = 1000
#: Container levels looked into: ``STEPS["a"]`` and ``STEPS["a"][0]``, not deeper.
_CONTAINER_DEPTH = 2
_LIB_PREFIXES = tuple({p for p in (sysconfig.get_paths().get("stdlib"),
                                   sysconfig.get_paths().get("purelib"),
                                   sysconfig.get_paths().get("platlib")) if p})


class _ClassComponent:
    """A ``BaseComponent`` subclass the body instantiates itself (``Threshold(cfg)(data=x)``):
    checked (platform) and versioned by its class, since no instance exists before the run."""

    def __init__(self, cls: type[BaseComponent]) -> None:
        self.cls = cls

    @functools.cached_property
    def spec(self) -> Any:
        return self.cls.class_spec()

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def platform(self) -> str:
        return str(self.spec.platform)

    @property
    def resources(self) -> Any:
        return self.spec.resources

    def __repr__(self) -> str:
        return f"<component class {self.cls.__qualname__}>"


def _note_inline(run: Any, inner: Pipeline) -> None:
    """A pipeline called inside a running one runs its body inline, as part of that run
    (decision 0004): its max_parallel, error_handler and timeout apply to its own tasks
    (engine/scopes.py), but a schedule, notifications and graph_config belong to runs of
    it. Said once per run and pipeline in the run's log when it has any of those."""
    spec = inner.spec
    idle = [name for name, value in (("schedule", spec.schedule),
                                     ("notifications", spec.notifications),
                                     ("graph_config", spec.graph_config)) if value]
    noted = run.inline_pipelines
    if not idle or inner.name in noted:
        return
    noted.add(inner.name)
    run.logs.append(LogRecord(run.run_id, time.time(), "warning",
                              f"pipeline {inner.name} runs inside this run's body, as part of "
                              f"it: its own {', '.join(idle)} do not apply (they are for runs "
                              f"of it)"))


def _reachable_components(fn: Any, given: Iterable[Any] = ()) -> Iterable[Any]:
    """Components the pipeline body can reach, found statically (no code runs): the values of
    the global and closure names its code (nested code objects included) uses, its default
    argument values and the arguments it is ``given``, looked into when they are user modules
    (the attribute names the code uses), containers (dict values, list/tuple/set items,
    ``_CONTAINER_DEPTH`` levels, ``_CONTAINER_ITEMS`` each), ``functools.partial`` objects,
    and user functions and pipelines (walked in turn). Blind spots:
    docs/decisions/0004-dsl-semantics.md ("Platforms")."""
    seen: set[int] = set()
    found: dict[int, Any] = {}
    stack = [inspect.unwrap(fn)]
    root = stack[0]
    module = getattr(root, "__module__", "") or ""
    for value in given:             # a component passed in (``p(step=remote_step)``)
        _visit(value, set(), module, found, stack, set(), 0)
    while stack:
        f = stack.pop()
        if id(f) in seen or not isinstance(f, types.FunctionType):
            continue
        seen.add(id(f))
        names = _names(f.__code__)
        cells = dict(zip(f.__code__.co_freevars, f.__closure__ or ()))
        looked: set[int] = set()           # modules and containers seen from this function
        for value in [*(f.__defaults__ or ()), *(f.__kwdefaults__ or {}).values()]:
            _visit(value, names, f.__module__, found, stack, looked, 0)
        for name in names | set(cells):
            cell = cells.get(name)
            if cell is not None:
                try:
                    value = cell.cell_contents
                except ValueError:          # empty cell
                    continue
            elif name in f.__globals__:
                value = f.__globals__[name]
            else:
                continue
            _visit(value, names, f.__module__, found, stack, looked, 0)
    return found.values()


def _check_called_inside(engine: Engine, components: list[Any]) -> None:
    """Refuse, before the run starts, a component meant for a platform with no executor that
    a component's body calls (a plain call inside that task: it would run here, in its
    place). Found as a body's components are, transitively."""
    seen = {id(c) for c in components}
    todo = list(components)
    while todo:
        c = todo.pop()
        cls = c.cls if isinstance(c, _ClassComponent) else \
            type(c) if isinstance(c, BaseComponent) else None
        bodies = [c.fn] if isinstance(c, Component) else \
            [vars(k)[m] for k in (cls.__mro__ if cls is not None else ())
             if k is not BaseComponent and k is not object
             for m in ("execute", "validate_inputs") if m in vars(k)]
        for body in bodies:
            for inner in _reachable_components(body):
                if id(inner) in seen:
                    continue
                seen.add(id(inner))
                todo.append(inner)
                if inner.platform not in engine.platforms:
                    raise ExecutorUnavailable(
                        inner.platform, [inner.name], available=engine.platforms,
                        where=f"{c.name} calls {inner.name} in its body, where it would run "
                        "as a plain call, here")


def _visit(value: Any, names: set[str], module: str, found: dict[int, Any],
           stack: list[Any], looked: set[int], depth: int) -> None:
    # Told by ``type(value)`` only: ``isinstance`` asks a lazy proxy its ``__class__``, which
    # forces it (a default that is a proxy whose connection is down crashed the run's start).
    t = type(value)
    if issubclass(t, (Component, BaseComponent)):
        found[id(value)] = value
    elif issubclass(t, Pipeline):
        stack.append(value.fn)
    elif t is types.FunctionType:
        if value.__module__ == module or _is_user_module(sys.modules.get(value.__module__ or "")):
            stack.append(value)
    elif issubclass(t, type):
        if (issubclass(value, BaseComponent) and value is not BaseComponent
                and not inspect.isabstract(value)):
            found.setdefault(id(value), _ClassComponent(value))
    elif t is functools.partial:
        _visit(value.func, names, module, found, stack, looked, depth)
    elif t is types.ModuleType:
        if id(value) in looked or not _is_user_module(value):
            return
        looked.add(id(value))
        attrs = vars(value)
        for attr in names:                  # ``mod.comp(...)``, ``pkg.sub.comp(...)``
            if attr in attrs:
                _visit(attrs[attr], names, module, found, stack, looked, depth)
    elif issubclass(t, (dict, list, tuple, set, frozenset)):
        if depth >= _CONTAINER_DEPTH or id(value) in looked:
            return
        looked.add(id(value))
        items = value.values() if issubclass(t, dict) else value
        for item in itertools.islice(items, _CONTAINER_ITEMS):
            _visit(item, names, module, found, stack, looked, depth + 1)


def _is_user_module(mod: Any) -> bool:
    """A module of the user's code: has a source file outside the standard library and
    site-packages, and is not TwinGraph's own."""
    if not isinstance(mod, types.ModuleType):
        return False
    if mod.__name__ == "twingraph" or mod.__name__.startswith("twingraph."):
        return False
    path = getattr(mod, "__file__", None)
    return isinstance(path, str) and not path.startswith(_LIB_PREFIXES)


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


