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


def test_a_failed_post_is_reported_without_the_urls_secrets() -> None:
    """The run's log is read by whoever may read the run: a hook URL's user:password, path
    and query (a chat service's secret) are not in it."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed once the block ends: connection refused
    heard: list[str] = []
    _post(f"http://bob:hunter2@127.0.0.1:{port}/services/T0/B0/SeCrEt?token=t0k",
          {"status": "FAILED"}, heard.append)
    assert len(heard) == 1, heard
    assert f"notification to http://127.0.0.1:{port}/... failed" in heard[0]
    assert not any(secret in heard[0] for secret in ("bob", "hunter2", "SeCrEt", "t0k"))


def test_a_backoff_from_zero_stays_zero_however_late_the_attempt() -> None:
    policy = RetryPolicy.parse({"max_attempts": 5000, "initial_delay": 0, "max_delay": 60,
                                "jitter": 0})
    assert policy is not None
    assert {policy.delay(a) for a in (1, 1024, 1025, 1026, 4999)} == {0.0}
    capped = RetryPolicy.parse({"max_attempts": 5000, "initial_delay": 0.5, "max_delay": 60,
                                "jitter": 0})
    assert capped is not None and capped.delay(1500) == 60      # an overflow is the cap


def test_a_webhook_url_read_with_its_last_newline_is_accepted() -> None:
    """urllib strips a URL's surrounding whitespace; a URL read from a secret file keeps
    its newline (refused by the first version of the check above)."""
    for url in ("http://127.0.0.1:9/hook\n", "  https://hooks.example/x\t"):
        assert PipelineSpec.build(name="p", notifications=url).notifications == url


def test_an_operation_named_by_a_str_subclass_is_registered() -> None:
    from enum import Enum

    from twingraph.engine.dynamic import NodeExecutor

    class Ops(str, Enum):
        LOAD = "load_s27"

    ex = NodeExecutor()
    ex.register_operation(Ops.LOAD, len)
    assert ex.resolve("load_s27") == (len, "operation")


def test_a_recorded_pipeline_name_is_matched_to_a_pipeline_name_first() -> None:
    import types

    from twingraph import pipeline
    from twingraph.cli.loading import find_pipeline

    mod = types.ModuleType("s27_two")

    @pipeline(name="report_v2")
    def first():
        return 1

    @pipeline(name="ingest")
    def second():
        return 2

    mod.ingest, mod.report = first, second          # the variable 'ingest' holds report_v2
    assert find_pipeline(mod, "ingest") is first                     # as typed: a variable
    assert find_pipeline(mod, "ingest", recorded=True) is second     # as a run recorded it
    assert find_pipeline(mod, "report", recorded=True) is second     # no such name: variable


def test_numbers_arrays_and_dates_of_other_libraries_print_as_json_data() -> None:
    """A NumPy or pandas number was printed as its repr, "np.int64(275)": text to jq."""
    import datetime
    import json

    import numpy as np

    from twingraph.core.jsonview import ARRAY_ITEMS_MAX, json_default
    from twingraph.service.workflows import jsonable

    value = {"qty": np.int64(275), "mean": np.float32(1.5), "ok": np.bool_(True),
             "arr": np.arange(3), "grid": np.eye(2, dtype=np.int8),
             "day": datetime.date(2026, 1, 2), "at": np.datetime64("2026-01-02T03:04:05"),
             "tags": {"a"}, "big": np.zeros(ARRAY_ITEMS_MAX + 1), "odd": object}
    out = json.loads(json.dumps(value, default=json_default))
    assert out["qty"] == 275 and out["mean"] == 1.5 and out["ok"] is True
    assert out["arr"] == [0, 1, 2] and out["grid"] == [[1, 0], [0, 1]]
    assert out["day"] == "2026-01-02" and out["at"] == "2026-01-02T03:04:05"
    assert out["tags"] == ["a"]
    assert out["big"].startswith("array(") and out["odd"] == "<class 'object'>"
    served = jsonable(value)
    assert (served["qty"], served["arr"], served["at"]) == (275, [0, 1, 2], "2026-01-02T03:04:05")


def test_a_postgresql_driver_that_is_not_installed_is_a_configuration_error() -> None:
    import importlib.util

    from twingraph.errors import ConfigurationError
    from twingraph.stores.metadata.url import normalize_url

    if importlib.util.find_spec("pg8000") is None:
        with pytest.raises(ConfigurationError, match="driver 'pg8000' the URL names is not installed"):
            normalize_url("postgresql+pg8000://u@127.0.0.1/db")
    assert normalize_url("postgresql://u@127.0.0.1/db").drivername == "postgresql+psycopg"


def test_a_misspelt_exception_name_in_a_retry_policy_is_warned_about() -> None:
    """``["ConnectionErorr"]`` matched nothing: the task was never retried, without a word."""
    import warnings

    with pytest.warns(UserWarning, match="did you mean 'ConnectionError'") as seen:
        RetryPolicy.parse({"exceptions": ["ConnectionErorr"]})
    assert seen[0].filename == __file__                  # the user's line, not TwinGraph's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RetryPolicy.parse({"exceptions": ["ConnectionError", "mypkg.ConnectionErorr",
                                          "RateLimited", TimeoutError]})


def test_finite_makes_strict_json_of_nan_and_infinities() -> None:
    import json

    from twingraph.core.jsonview import finite
    value = {"a": float("nan"), "b": [1.5, float("inf"), (float("-inf"), 2)], "c": "NaN"}
    assert json.dumps(finite(value), allow_nan=False) == \
        '{"a": null, "b": [1.5, null, [null, 2]], "c": "NaN"}'


def test_settings_errors_name_the_environment_variable(monkeypatch, tmp_path) -> None:
    from twingraph.engine.resources import LocalResources
    from twingraph.errors import ConfigurationError
    from twingraph.runtime import build_engine
    from twingraph.settings import Settings

    monkeypatch.setenv("TWINGRAPH_LOCAL_RESOURCES", "cpu=-1")
    with pytest.raises(ConfigurationError, match="^TWINGRAPH_LOCAL_RESOURCES: "):
        LocalResources()
    monkeypatch.delenv("TWINGRAPH_LOCAL_RESOURCES")
    monkeypatch.setenv("TWINGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TWINGRAPH_DATABASE_URL", raising=False)
    monkeypatch.setenv("TWINGRAPH_RESULT_STORE", "sqlitee")
    with pytest.raises(ConfigurationError, match="^TWINGRAPH_RESULT_STORE: unknown storage"):
        build_engine(Settings.from_env())
    monkeypatch.setenv("TWINGRAPH_RESULT_STORE", "sqlite")
    monkeypatch.setenv("TWINGRAPH_WRITER", "threads")
    with pytest.raises(ConfigurationError, match="^TWINGRAPH_WRITER must be one of"):
        build_engine(Settings.from_env())


def test_json_views_of_long_doubles_nanosecond_dates_and_series() -> None:
    """Regression round: a long double's ``tolist`` is itself (REST recursed for ever);
    nanosecond datetimes became integers; a Series lost its index (a look-alike here)."""
    import json

    import numpy as np

    from twingraph.core.jsonview import json_default
    from twingraph.service.workflows import jsonable

    value = {"ld": np.longdouble(1.5), "ns": np.datetime64("2020-01-01T00:00:00.000000001"),
             "col": np.array(["2020-01-02"], dtype="datetime64[ns]"),
             "td": np.timedelta64(5, "s")}
    out = json.loads(json.dumps(value, default=json_default))
    assert out["ld"].startswith("np.longdouble(") and jsonable(value)["ld"] == out["ld"]
    assert out["ns"] == "2020-01-01T00:00:00.000000001"
    assert out["col"] == ["2020-01-02T00:00:00.000000000"] and out["td"] == "5 seconds"

    class Series:                     # pandas' shape: a dtype, an index, to_dict, tolist
        dtype = np.dtype("int64")
        index = ["a", "b"]
        size = 2

        def to_dict(self):
            return {"a": np.int64(1), "b": np.int64(2)}

        def tolist(self):
            return [1, 2]

    assert json.loads(json.dumps(Series(), default=json_default)) == {"a": 1, "b": 2}
