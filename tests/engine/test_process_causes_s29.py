"""A process task's exception comes back with its whole ``__cause__`` chain (session 29): only
the first link travelled, so ``raise C from B`` where ``B`` was raised ``from A`` lost ``A``, and
a body walking the chain (or a log reading it) saw less than a thread task gives."""
from __future__ import annotations

import pytest

from twingraph import component, pipeline


class LowS29(Exception):
    pass


@component(cache=False, executor="process")
def layered_s29() -> None:
    try:
        try:
            raise LowS29("disk full")
        except LowS29 as low:
            raise OSError("write failed") from low
    except OSError as mid:
        raise RuntimeError("save failed") from mid


@pytest.mark.timeout(120)
def test_the_whole_cause_chain_travels(engine) -> None:
    seen: list[str] = []

    @pipeline(name="causes_s29", error_handler="continue")
    def flow():
        try:
            layered_s29().result()
        except RuntimeError as exc:
            link: BaseException | None = exc.__cause__     # the task's own exception
            while link is not None:
                seen.append(repr(link))
                link = link.__cause__
        return 1

    r = flow.run(engine=engine)
    assert r.value == 1, r.error
    assert seen == ["RuntimeError('save failed')", "OSError('write failed')",
                    "LowS29('disk full')"]
