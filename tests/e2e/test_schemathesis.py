"""Schemathesis over the server's own OpenAPI document (CI-sized: at most ``MAX_EXAMPLES``
derandomized examples per operation, no shrinking).

Every operation of ``/openapi.json`` gets generated requests — valid and invalid — against the
server app in this process (the same ``build_app`` as ``twingraph server``, on a fresh embedded
home with the e2e components loaded). Two checks: no 5xx, and every response that the document
describes (status and body schema) conforms to it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def api_schema() -> Iterator[Any]:
    from twingraph.server.build import build_app
    from twingraph.settings import Settings
    with tempfile.TemporaryDirectory() as home, pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWINGRAPH_HOME", home)
        mp.delenv("TWINGRAPH_DATABASE_URL", raising=False)
        for var in ("TWINGRAPH_RATE_LIMIT", "TWINGRAPH_RATE_LIMIT_BULK", "TWINGRAPH_RATE_LIMIT_WS"):
            mp.setenv(var, "off")
        app = build_app(Settings.from_env(), load=[str(ROOT / "tests/resources/server_app.py")])
        svc = app.state.services
        try:
            yield schemathesis.openapi.from_asgi("/openapi.json", app)
        finally:
            svc.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
