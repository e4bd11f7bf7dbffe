"""A user module whose components the pipelines in ``reach_pipes`` reach only through it
(``reach_steps.reach_docker_step(...)``, a dict or list of its components, a helper function of
it): the static platform check must find them. Used by tests/engine/test_dsl_reach.py."""

from __future__ import annotations

from twingraph import component


@component(platform="docker", docker_image="python:3.11-slim")
def reach_docker_step(x):
    return x


@component(platform="kubernetes")
def reach_k8s_step(x):
    return x


def run_on_docker(x):
    """A helper (not a component) that calls a docker component."""
    return reach_docker_step(x=x)
