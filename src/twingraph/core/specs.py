"""Frozen definitions of components and pipelines, validated from the documented parameters.

Runtime state never lives here (the engine owns it). Validation raises ``ValidationError`` with
the parameter's name, at decoration time, so a bad ``@component`` fails on import, not mid-run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twingraph.core.arguments import Parameters
from twingraph.core.retry import RetryPolicy
from twingraph.errors import ValidationError

PLATFORMS = ("local", "docker", "kubernetes", "lambda", "batch", "celery")
LOCAL_MODES = ("auto", "inline", "thread", "process")
ERROR_HANDLERS = ("fail", "continue", "retry", "custom")
_CPU = re.compile(r"^\d+(\.\d+)?m?$")
_MEM = re.compile(r"^\d+(\.\d+)?\s*([KMGTP]i?B?|[kmgtp]i?b?)?$")
_HUGE = 2.0 ** 62            # CPUs or bytes: above it (or inf, nan) is not a resource amount


def _dict(name: str, value: Any, *, str_values: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be a dict, got {type(value).__name__}")
    out = dict(value)
    for k, v in out.items():
        if not isinstance(k, str):
            raise ValidationError(f"{name}: keys must be strings, got {k!r}")
        if str_values and not isinstance(v, (str, int, float, bool)):
            raise ValidationError(f"{name}[{k!r}] must be a string or number, got {type(v).__name__}")
    if str_values:
        out = {k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
               for k, v in out.items()}
    return out


def _positive(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value == float("inf"):
        raise ValidationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _environment(value: Any) -> dict[str, str]:
    """``environment=``: names and values a process environment can hold. A name that is empty
    or holds "=" or NUL, or a value holding NUL, cannot be set (``os.environ`` raises): refused
    here, at definition, rather than failing the task in its worker."""
    env = _dict("environment", value, str_values=True)
    for k, v in env.items():
        if not k or "=" in k or "\0" in k:
            raise ValidationError(f"environment: invalid variable name {k!r} "
                                  "(it must be non-empty, without '=' or NUL)")
        if "\0" in v:
            raise ValidationError(f"environment[{k!r}]: the value must not contain NUL")
    return env


def validate_resources(value: Any) -> dict[str, Any]:
    res = _dict("resources", value)
    for k, v in res.items():
        if k == "cpu":
            # A string amount follows the rules of a number: "0" or "0m" is no more a CPU than 0.
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < _HUGE \
                or isinstance(v, str) and bool(_CPU.match(v)) \
                and 0 < float(v[:-1] if v.endswith("m") else v) < _HUGE
        elif k == "memory":
            m = _MEM.match(v) if isinstance(v, str) else None
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < _HUGE \
                or m is not None and 0 < float(v[:m.start(2)] if m.group(2) else v) < _HUGE
        elif k == "gpu":
            ok = isinstance(v, (int, bool)) and (v is True or v is False or 0 <= v < _HUGE)
        else:
            raise ValidationError(f"resources: unknown key {k!r} (allowed: cpu, memory, gpu)")
        if not ok:
            raise ValidationError(f"resources[{k!r}]: invalid value {v!r}")
    return res



_MEM_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15,
              "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}


def resource_amounts(resources: Mapping[str, Any]) -> tuple[int, int, int]:
    """A validated ``resources`` dict as (milli-CPUs, bytes of memory, GPUs), 0 where absent.
    CPU as Kubernetes writes it ("500m", "2", 1.5); memory in bytes or with a unit, decimal
    ("1G" = 10**9) or binary ("1Gi" = 2**30), a trailing "B" allowed; a GPU as True or a count."""
    cpu = resources.get("cpu", 0)
    if isinstance(cpu, str):
        cpu = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    mem = resources.get("memory", 0)
    if isinstance(mem, str):
        m = _MEM.match(mem)
        assert m is not None              # validated by ``_resources``
        unit = (m.group(2) or "").lower().rstrip("b")
        mem = float(mem[:m.start(2)] if m.group(2) else mem) * _MEM_UNITS[unit]
    gpu = resources.get("gpu", 0)
    return round(cpu * 1000), int(mem), int(gpu)


#: A component's timeout when it sets none (seconds). One that sets a shorter one is never run
#: inline by the 'auto' executor: an inline call cannot be stopped.
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class ComponentSpec:
    """A component's definition: the documented ``@component`` parameters plus identity."""
    name: str
    qualname: str                       # module:qualname, the component's identity
    code_version: str
    platform: str = "local"
    docker_image: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    retry_policy: RetryPolicy | None = None
    timeout: float = DEFAULT_TIMEOUT
    resources: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cache: bool = True
    executor: str = "auto"              # local mode: auto | inline | thread | process
    raw_result: bool = False            # declarative operations: result is the value itself
    # How a call's arguments are named for its memo key (``core.arguments``); None: as given.
    parameters: Parameters | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, *, name: str, qualname: str, code_version: str, platform: str = "local",
              docker_image: str | None = None, config: Any = None, retry_policy: Any = None,
              timeout: Any = DEFAULT_TIMEOUT, resources: Any = None, environment: Any = None,
              labels: Any = None, cache: bool = True, executor: str = "auto") -> ComponentSpec:
        if platform not in PLATFORMS:
            raise ValidationError(f"platform must be one of {', '.join(PLATFORMS)}; got {platform!r}")
        if docker_image is not None and (not isinstance(docker_image, str) or not docker_image):
            raise ValidationError("docker_image must be a non-empty string")
        if platform == "docker" and not docker_image:
            raise ValidationError("platform='docker' needs docker_image")
        if executor not in LOCAL_MODES:
            raise ValidationError(f"executor must be one of {', '.join(LOCAL_MODES)}; got {executor!r}")
        if not isinstance(cache, bool):
            raise ValidationError("cache must be True or False")
        env = _environment(environment)
        if env and platform == "local" and executor in ("thread", "inline"):
            # Threads share one os.environ: a task's own variables need its own process.
            raise ValidationError(f"environment needs its own process: executor={executor!r} "
                                  "cannot apply it (use 'auto' or 'process')")
        cfg = _dict("config", config)
        limit = _positive("timeout", timeout) or DEFAULT_TIMEOUT
        if "timeout" in cfg:
            # The platform's own timeout (Lambda, Batch...) bounds the task too: the smaller wins.
            limit = min(limit, _positive("config['timeout']", cfg["timeout"]) or limit)
        return cls(name=name, qualname=qualname, code_version=code_version, platform=platform,
                   docker_image=docker_image, config=cfg,
                   retry_policy=RetryPolicy.parse(retry_policy),
                   timeout=limit,
                   resources=validate_resources(resources),
                   environment=env,
                   labels=_dict("labels", labels, str_values=True), cache=cache,
                   executor=executor)

    def memo_config(self) -> dict[str, Any]:
        """The part of the definition that changes results (goes into the structural key)."""
        return {"platform": self.platform, "image": self.docker_image, "config": dict(self.config),
                "env": dict(self.environment)}


@dataclass(frozen=True)
class PipelineSpec:
    """The documented ``@pipeline`` parameters."""
    name: str
    schedule: str | None = None
    max_parallel: int = 10
    error_handler: str = "fail"
    timeout: float = 3600.0
    graph_config: Mapping[str, Any] = field(default_factory=dict)
    notifications: Any = field(default_factory=dict)
    error_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, *, name: str, schedule: str | None = None, max_parallel: Any = 10,
              error_handler: str = "fail", timeout: Any = 3600, graph_config: Any = None,
              notifications: Any = None, error_config: Any = None,
              schedule_validator: Callable[[str], None] | None = None) -> PipelineSpec:
        if not isinstance(name, str) or not name.strip():
            raise ValidationError("pipeline name must be a non-empty string")
        if schedule is not None:
            if not isinstance(schedule, str):
                raise ValidationError("schedule must be a cron expression string")
            if schedule_validator is not None:
                schedule_validator(schedule)
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValidationError(f"max_parallel must be an integer >= 1, got {max_parallel!r}")
        if error_handler not in ERROR_HANDLERS:
            raise ValidationError(f"error_handler must be one of {', '.join(ERROR_HANDLERS)}; "
                                  f"got {error_handler!r}")
        econf = _dict("error_config", error_config)
        unknown = sorted(set(econf) - _ERROR_CONFIG_KEYS)
        if unknown:      # a misspelt key was accepted and did nothing
            raise ValidationError(f"error_config: unknown keys {unknown}; allowed: "
                                  f"{sorted(_ERROR_CONFIG_KEYS)}")
        if error_handler == "custom" and "handler" not in econf:
            raise ValidationError("error_handler='custom' needs error_config={'handler': ...}")
        idle = sorted(k for k in econf if error_handler not in _ERROR_CONFIG_FOR[k])
        if idle:         # a key the chosen handler never reads was accepted and did nothing
            raise ValidationError(
                f"error_config: {', '.join(repr(k) for k in idle)} "
                f"{'does' if len(idle) == 1 else 'do'} nothing under "
                f"error_handler={error_handler!r} ("
                + "; ".join(f"{k!r} is for error_handler="
                            f"{' or '.join(repr(h) for h in sorted(_ERROR_CONFIG_FOR[k]))}"
                            for k in idle) + ")")
        if "handler" in econf and not (callable(econf["handler"])
                                       or isinstance(econf["handler"], str)):
            raise ValidationError(f"error_config.handler must be a callable or the name of a "
                                  f"registered error handler, got {econf['handler']!r}")
        if not isinstance(econf.get("continue_on_error", False), bool):
            # 'false' is a true value: the run went on where the user asked it to stop
            raise ValidationError(f"error_config.continue_on_error must be True or False, got "
                                  f"{econf['continue_on_error']!r}")
        if "retry_policy" in econf:       # the policy error_handler='retry' gives tasks
            econf["retry_policy"] = RetryPolicy.parse(econf["retry_policy"])
        notes = notifications if notifications is not None else {}
        _check_notifications(notes)
        return cls(name=name, schedule=schedule, max_parallel=max_parallel,
                   error_handler=error_handler,
                   timeout=_positive("timeout", timeout) or 3600.0,
                   graph_config=_graph_config(graph_config), notifications=notes,
                   error_config=econf)

    @property
    def lineage(self) -> bool:
        """Whether runs record DEPENDS_ON data flow (``graph_config['lineage']``)."""
        return bool(self.graph_config.get("lineage", True))

    @property
    def export_path(self) -> str | None:
        """Where a run's lineage graph is written as GraphSON when it ends, if anywhere."""
        return self.graph_config.get("export")


#: ``graph_config`` keys: name -> (accepted types, what it must be, in words).
GRAPH_CONFIG_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "lineage": ((bool,), "True or False"),
    "export": ((str, os.PathLike), "a file path (str); '{run_id}' in it is replaced by the run id"),
}


def _graph_config(value: Any) -> dict[str, Any]:
    cfg = _dict("graph_config", value)
    for k, v in cfg.items():
        if k not in GRAPH_CONFIG_KEYS:
            raise ValidationError(f"graph_config: unknown key {k!r} "
                                  f"(allowed: {', '.join(GRAPH_CONFIG_KEYS)})")
        types, what = GRAPH_CONFIG_KEYS[k]
        if not isinstance(v, types):
            raise ValidationError(f"graph_config[{k!r}] must be {what}, got {type(v).__name__}")
    if "export" in cfg:
        cfg["export"] = os.fspath(cfg["export"])
        if not isinstance(cfg["export"], str) or not cfg["export"].strip():
            raise ValidationError("graph_config['export'] must be a non-empty file path")
    return cfg


NOTIFY_EVENTS = ("on_end", "on_success", "on_failure")


def _url_problem(url: str) -> str | None:
    """Why an http(s) URL cannot be posted to (None: it can): it failed only at the run's
    end, in the thread posting it, and never reached the run's log."""
    url = url.strip()                   # as urllib strips it (a secret file's last newline)
    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds a space or a control character"
    try:
        parts = urlsplit(url)
        parts.port                      # noqa: B018 - raises for a port that is not one
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if not parts.hostname:
        return "names no host"
    return None


def _check_target(where: str, target: Any) -> None:
    if callable(target):
        return
    if isinstance(target, str) and re.match(r"^https?://", target.strip()):
        problem = _url_problem(target)
        if problem is None:
            return
        raise ValidationError(f"{where}: notification URL {target!r} {problem}")
    if isinstance(target, (list, tuple)):
        for t in target:
            _check_target(where, t)
        return
    raise ValidationError(f"{where}: a notification target is a callable or an http(s) URL, "
                          f"got {target!r}")


#: What ``error_config`` may hold: the custom handler, whether the run goes on after it, and
#: the retry policy ``error_handler='retry'`` gives tasks that have none.
_ERROR_CONFIG_KEYS = frozenset({"handler", "continue_on_error", "retry_policy"})
#: ... and which ``error_handler`` reads each.
_ERROR_CONFIG_FOR = {"handler": frozenset({"custom"}), "continue_on_error": frozenset({"custom"}),
                     "retry_policy": frozenset({"retry"})}


def _check_notifications(notes: Any) -> None:
    if isinstance(notes, Mapping):
        for k, v in notes.items():
            if k not in NOTIFY_EVENTS:
                raise ValidationError(f"notifications: unknown event {k!r} "
                                      f"(allowed: {', '.join(NOTIFY_EVENTS)})")
            _check_target(f"notifications[{k!r}]", v)
    else:
        _check_target("notifications", notes)
