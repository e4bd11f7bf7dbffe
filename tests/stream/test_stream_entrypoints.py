"""What a stream entry point ("module:function") may name: a function marked ``@stream_job`` or
annotated ``-> StreamExecutionEnvironment``; anything else is refused before it is called
(``twingraph.stream.entrypoints``). The job manager's REST face is tested over HTTP in
test_stream_jobmanager.py."""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import twingraph.stream
from twingraph.errors import ValidationError
from twingraph.stream import CollectSink, StreamExecutionEnvironment, stream_job
from twingraph.stream.entrypoints import is_stream_job, load_entrypoint
from twingraph.stream.jobs import JobManager


def annotated() -> StreamExecutionEnvironment:      # a string annotation (future import)
    env = StreamExecutionEnvironment("annotated")
    env.from_collection([1, 2]).map(str).add_sink(CollectSink())
    return env


def annotated_with_the_class() -> None: ...
annotated_with_the_class.__annotations__["return"] = StreamExecutionEnvironment


def dotted() -> twingraph.stream.StreamExecutionEnvironment:
    return annotated()


class MyEnvironment(StreamExecutionEnvironment):
    pass


def subclass_annotated() -> None: ...
subclass_annotated.__annotations__["return"] = MyEnvironment


@stream_job
def decorated(n=3):  # type: ignore[no-untyped-def]
    return annotated()


def unmarked(n: int = 3):  # type: ignore[no-untyped-def]
    return annotated()


def returns_something_else() -> int:
    return 1


def optional() -> StreamExecutionEnvironment | None:
    return None


def wrapping(func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(*a: Any, **kw: Any) -> Any:
        return func(*a, **kw)
    return wrapper


@pytest.mark.parametrize("obj", [annotated, annotated_with_the_class, dotted, subclass_annotated,
                                 decorated, wrapping(decorated), wrapping(annotated)])
def test_marked_functions_are_stream_jobs(obj: Any) -> None:
    assert is_stream_job(obj)


@pytest.mark.parametrize("obj", [
    unmarked, returns_something_else, optional,
    print, len, __import__, exec,                                   # builtins
    CollectSink, StreamExecutionEnvironment,                         # classes
    StreamExecutionEnvironment("x").set_parallelism,                 # a bound method
    functools.partial(annotated),                                    # callable objects
    types.SimpleNamespace(), lambda: annotated(), sys, None, 42,
])
def test_everything_else_is_not(obj: Any) -> None:
    assert not is_stream_job(obj)


def test_the_decorator_takes_functions_only() -> None:
    with pytest.raises(TypeError):
        stream_job(CollectSink)  # type: ignore[arg-type]

    def plain(n=1):  # type: ignore[no-untyped-def]
        return annotated()
    assert not is_stream_job(plain)
    assert stream_job(plain) is plain and is_stream_job(plain)


def test_refusals_name_the_entry_point_and_call_nothing(tmp_path: Path) -> None:
    module = types.ModuleType("h2_entry_probe")
    marker = tmp_path / "called"

    def helper() -> None:
        marker.write_text("called")

    def trap(name: str) -> Any:                # a module __getattr__ is not consulted
        marker.write_text(name)
        return annotated
    module.helper = helper                     # type: ignore[attr-defined]
    module.__getattr__ = trap                  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        for name, message in [("helper", "is not a stream job (a function with neither mark)"),
                              ("lazy", "has no attribute 'lazy'")]:
            with pytest.raises(ValidationError, match=f"'h2_entry_probe:{name}'.*"
                                                      + message.replace("(", r"\(").replace(")", r"\)")):
                load_entrypoint(f"h2_entry_probe:{name}")
            with pytest.raises(ValidationError, match=f"h2_entry_probe:{name}"):
                JobManager().submit(f"h2_entry_probe:{name}")
    finally:
        del sys.modules[module.__name__]
    assert not marker.exists()
    with pytest.raises(ValidationError, match=r"'os:system' is not a stream job \(a builtin\)"):
        load_entrypoint("os:system")
    with pytest.raises(ValidationError, match="must look like"):
        load_entrypoint("os.system")


def test_a_marked_function_is_returned_uncalled_and_runs_as_a_job() -> None:
    assert load_entrypoint(f"{__name__}:decorated") is decorated
    rec = JobManager().submit(f"{__name__}:annotated")
    rec.client.wait(30)
    assert rec.client.status.value == "FINISHED"
