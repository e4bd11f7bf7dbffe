"""Pipelines whose components are ``BaseComponent`` instances, or are reached other than through
a global name bound directly to a component (a module attribute, a dict or list, a helper of
another module, a class instantiated in the body). Each first runs ``reach_marker``, which
writes a file: a pipeline refused before it starts leaves no file.
Used by tests/engine/test_dsl_reach.py."""

from __future__ import annotations

import functools
from pathlib import Path

from tests.resources import reach_steps as dockmod
from tests.resources.reach_steps import run_on_docker
from twingraph import BaseComponent, component, pipeline, register_component


@component
def reach_marker(path):
    Path(path).write_text("ran")
    return 1


class ReachScale(BaseComponent):
    def execute(self, xs):
        return [x * self.config.get("factor", 2) for x in xs]


class ReachTotal(BaseComponent):
    def execute(self, xs):
        return {"total": sum(xs)}


register_component("reach_total", ReachTotal)      # named by its registration


class ReachDocker(BaseComponent):
    component_options = {"platform": "docker", "docker_image": "python:3.11-slim"}

    def execute(self, xs):
        return xs


scale = ReachScale({"factor": 3})
total = ReachTotal()
docker_scale = ReachDocker()

STEPS = {"docker": dockmod.reach_docker_step, "marker": reach_marker}
CHAIN = [(reach_marker, dockmod.reach_k8s_step)]
LATER = functools.partial(dockmod.reach_docker_step, x=0)


@pipeline(name="reach_base_and_component")
def base_and_component(path):
    reach_marker(path=path)
    s = scale(xs=[1, 2, 3])
    return total(xs=s["outputs"]["result"])


@pipeline(name="reach_two_bases")
def two_bases():
    s = scale(xs=[1, 2])
    return total(xs=s["outputs"]["result"])


@pipeline(name="reach_base_docker")
def base_docker(path):
    m = reach_marker(path=path)
    return docker_scale(xs=[m["outputs"]["result"]])


@pipeline(name="reach_base_class_in_body")
def base_class_in_body(path):
    m = reach_marker(path=path)
    return ReachDocker({"k": 1})(xs=[m["outputs"]["result"]])


@pipeline(name="reach_module_attr")
def module_attr(path):
    m = reach_marker(path=path)
    return dockmod.reach_docker_step(x=m["outputs"]["result"])


@pipeline(name="reach_dict_held")
def dict_held(path):
    m = STEPS["marker"](path=path)
    return STEPS["docker"](x=m["outputs"]["result"])


@pipeline(name="reach_list_of_tuples")
def list_of_tuples(path):
    out = []
    for first, second in CHAIN:
        out.append(second(x=first(path=path)["outputs"]["result"]))
    return out


@pipeline(name="reach_imported_helper")
def imported_helper(path):
    m = reach_marker(path=path)
    return run_on_docker(m["outputs"]["result"])


@pipeline(name="reach_in_comprehension")
def in_comprehension(path):
    m = reach_marker(path=path)
    return [dockmod.reach_docker_step(x=v) for v in [m["outputs"]["result"]]]


@pipeline(name="reach_partial")
def via_partial(path):
    reach_marker(path=path)
    return LATER()


@component
def local_calls_docker(x):
    """A local component whose body calls a docker component: a plain call inside its task."""
    return dockmod.reach_docker_step(x=x)


class LocalCallsK8s(BaseComponent):
    def execute(self, x):
        return dockmod.reach_k8s_step(x=x)


@pipeline(name="reach_inside_a_component")
def inside_a_component(path):
    reach_marker(path=path)
    return local_calls_docker(x=1)


@pipeline(name="reach_inside_a_base_component")
def inside_a_base_component(path):
    reach_marker(path=path)
    return LocalCallsK8s()(x=1)
