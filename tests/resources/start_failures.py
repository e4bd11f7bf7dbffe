"""Pipelines whose start can fail with a plain exception after their run was created.

``SiteStep`` is a class component whose options (``platform``, ``resources``...) come from a
site file, read each time they are looked up, as a component configured by its deployment
might be. The file's path is in ``TG_SITE_FILE``. The platform check that creating a run and
starting it both do reads it (``BaseComponent.class_spec``), so a run created while the file
is there and started after it was removed fails its start with ``FileNotFoundError``: not a
``TwinGraphError``, an unexpected error of the start's preparation (what
tests/server/test_start_failures.py needs, without patching the server). A file naming a
platform with no executor here makes the same check raise ``ExecutorUnavailable`` instead.

``plain_pipeline`` needs no file: the run started after a failed one, to show that nothing
else was lost.
"""
import json
import os
from typing import Any

from twingraph import BaseComponent, component, pipeline


class SiteOptions:
    """``component_options`` as the site file says at each look-up (class or instance)."""

    def __get__(self, obj: Any, owner: Any = None) -> dict[str, Any]:
        with open(os.environ["TG_SITE_FILE"], encoding="utf-8") as f:
            return dict(json.load(f))


class SiteStep(BaseComponent):
    component_options = SiteOptions()  # type: ignore[assignment]

    def execute(self, x: int) -> int:
        return x * 10


@component
def add_one(n: int) -> int:
    return n + 1


@pipeline(name="site_pipeline")
def site_pipeline(x: int = 2):
    return SiteStep()(x=x)


@pipeline(name="plain_pipeline")
def plain_pipeline(n: int = 3):
    return add_one(n=n)
