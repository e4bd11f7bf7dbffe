"""Session 27 review findings in the pure core and the notifier: a malformed webhook URL was
accepted by ``@pipeline`` and crashed the posting thread at the run's end (nothing in the
run's log); a backoff from ``initial_delay=0`` jumped to ``max_delay`` once the multiplier's
power overflowed."""
from __future__ import annotations

import pytest

from twingraph.core.retry import RetryPolicy
from twingraph.core.specs import PipelineSpec
from twingraph.engine.notify import _post
from twingraph.errors import ValidationError


@pytest.mark.parametrize("url, why", [
    ("http://[::1", "not a valid URL"),
    ("http://exa mple.com/x", "space or a control character"),
    ("http://h/\x00", "space or a control character"),
    ("https://", "names no host"),
    ("https://h:99999/x", "not a valid URL"),
    ("http://h:port/", "not a valid URL"),
])
def test_a_webhook_url_that_cannot_be_posted_to_is_refused_at_decoration(url, why) -> None:
    with pytest.raises(ValidationError, match=why):
        PipelineSpec.build(name="p", notifications=[url])
    with pytest.raises(ValidationError, match=why):
        PipelineSpec.build(name="p", notifications={"on_failure": url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://hooks.example/x?a=1",
                                 "http://[::1]:9/h"])
def test_good_webhook_urls_are_accepted(url) -> None:
    assert PipelineSpec.build(name="p", notifications=url).notifications == url


def test_a_post_that_cannot_be_built_is_reported_not_raised() -> None:
    heard: list[str] = []
    _post("http://[::1", {"status": "SUCCESS"}, heard.append)      # raised in its thread before
    assert len(heard) == 1 and "Invalid IPv6 URL" in heard[0]


def test_a_backoff_from_zero_stays_zero_however_late_the_attempt() -> None:
    policy = RetryPolicy.parse({"max_attempts": 5000, "initial_delay": 0, "max_delay": 60,
                                "jitter": 0})
    assert policy is not None
    assert {policy.delay(a) for a in (1, 1024, 1025, 1026, 4999)} == {0.0}
    capped = RetryPolicy.parse({"max_attempts": 5000, "initial_delay": 0.5, "max_delay": 60,
                                "jitter": 0})
    assert capped is not None and capped.delay(1500) == 60      # an overflow is the cap
