"""--param values are checked against the pipeline's annotations (str/int/float/bool)."""
import pytest

from twingraph.cli.loading import parse_params
from twingraph.errors import ValidationError


def pipe(name: str, n: int, ratio: float, flag: bool, anything, items: list = None):
    return None


def test_values_follow_the_annotations():
    got = parse_params(["name=123", "n=3", "ratio=2", "flag=true", "anything=[1, 2]",
                        "items=[1]"], pipe)
    assert got == {"name": "123", "n": 3, "ratio": 2.0, "flag": True, "anything": [1, 2],
                   "items": [1]}
    assert type(got["ratio"]) is float


@pytest.mark.parametrize("item, key", [("n=abc", "n"), ("n=1.5", "n"), ("flag=1", "flag"),
                                       ("ratio=x", "ratio"), ("n=true", "n")])
def test_a_value_of_the_wrong_type_is_refused_naming_the_parameter(item, key):
    with pytest.raises(ValidationError, match=f"--param {key}: expected"):
        parse_params([item], pipe)


def test_without_a_function_values_are_plain_json():
    assert parse_params(["n=abc", "m=1"]) == {"n": "abc", "m": 1}


@pytest.mark.parametrize("item, key", [("ratio=NaN", "ratio"), ("y=Infinity", "y"),
                                       ("y=-Infinity", "y"), ("items=[1, NaN]", "items")])
def test_nan_and_infinity_are_refused_naming_the_parameter(item, key):
    """json.loads takes them, a run cannot store them: refused here, not by the store later."""
    with pytest.raises(ValidationError, match=f"--param {key}: .*NaN or Infinity"):
        parse_params([item], pipe)


def test_a_parameter_given_twice_is_refused():
    """``--param n=1 --param n=2`` kept the last one without a word."""
    with pytest.raises(ValidationError, match="--param n is given twice"):
        parse_params(["n=1", "name=x", "n=2"], pipe)


def test_nan_for_a_str_parameter_is_text():
    assert parse_params(["name=NaN"], pipe) == {"name": "NaN"}


def test_the_live_display_counts_the_nodes_of_a_dag_not_handed_to_its_run_yet():
    from twingraph.cli.dynamic import dag_progress
    run = {"total": 10_000, "finished": 4_000, "pending": 1_000, "percent": 40.0,
           "eta_seconds": 6.0, "rate": 1_000.0}
    p = dag_progress(run, 40_000)
    assert (p["total"], p["pending"], p["percent"]) == (40_000, 31_000, 10.0)
    assert p["eta_seconds"] == 36.0                   # 36,000 nodes left at 1,000 a second
    assert dag_progress(run, 10_000) is run           # all handed over: the run's own figures
    assert dag_progress({**run, "rate": None}, 40_000)["eta_seconds"] is None


@pytest.mark.parametrize("item, key", [("ratio=1e400", "ratio"), ("y=-1e999", "y"),
                                       ("items=[1, 2e308]", "items")])
def test_a_number_too_large_for_a_double_is_refused_as_infinity_is(item, key):
    """json.loads makes ``inf`` of ``1e400``: it slipped past the NaN/Infinity check and the
    run recorded the text "inf" in its place (a resume then asked for it again)."""
    with pytest.raises(ValidationError, match=f"--param {key}: .*NaN or Infinity"):
        parse_params([item], pipe)
    assert parse_params(["ratio=1e300"], pipe) == {"ratio": 1e300}


def typed_optional(a: "int | None" = None, b: "Optional[str]" = None, c: "Optional[float]" = None):
    return None


from typing import Optional  # noqa: E402  (the annotations above are resolved by name)


def test_optional_scalars_are_checked_and_take_null():
    """``Optional[int]`` was not checked: ``--param a=abc`` ran the pipeline with a str."""
    assert parse_params(["a=3", "b=123", "c=2"], typed_optional) == {"a": 3, "b": "123",
                                                                   "c": 2.0}
    assert parse_params(["a=null", "b=null"], typed_optional) == {"a": None, "b": None}
    with pytest.raises(ValidationError, match="--param a: expected int or null, got 'abc'"):
        parse_params(["a=abc"], typed_optional)


def test_server_refuses_a_log_level_logging_or_uvicorn_does_not_know():
    """``--log-level bogus`` ended in a traceback from ``logging``; ``warn`` got past it and
    failed in uvicorn after the server said it was up. A usage error now (exit 2)."""
    from typer.testing import CliRunner

    from twingraph.cli.main import app
    for bad in ("bogus", "trace", "warn"):
        out = CliRunner().invoke(app, ["server", "--log-level", bad])
        assert out.exit_code == 2, (bad, out.output)
        assert "is not one of" in out.output
