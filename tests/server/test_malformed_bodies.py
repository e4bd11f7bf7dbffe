"""JSON the server can neither store nor answer with is a 422, not a 500 (``server.bodies``).

Found by fuzzing every route (reproductions in the review notes, /tmp/h4_*.py):

- a lone surrogate escape (``"\\ud800"``) in a free-form string reached SQLite, whose driver
  cannot encode it: 500 ``UnicodeEncodeError`` on ``POST/PUT /api/v1/projects``,
  ``PUT /api/v1/pipelines/{id}`` and others;
- ``metadata`` / ``params`` nested ~300 deep validated and were stored; every later answer that
  showed the object failed in pydantic's serializer (depth limit ~255): a 500 on each read of
  the project or schedule, for good;
- inside ``execute-dynamic``'s ``program`` text the same values arrived unchecked: a surrogate
  in ``dag_id`` or ``operation`` was a 500 (the answer, or the error envelope quoting it).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twingraph.server.bodies import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_problem
from twingraph.service import Services

JSON = {"content-type": "application/json"}
SURROGATE = '"x\\ud800y"'          # JSON text: a lone high surrogate escape


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _project(client: TestClient, name: str = "p") -> str:
    r = client.post("/api/v1/projects", json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["id"])


def _pipeline(client: TestClient, project_id: str) -> str:
    r = client.post(f"/api/v1/projects/{project_id}/pipelines", json={
        "name": "g", "nodes": [{"id": "numbers", "component": "make_numbers"}], "edges": []})
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["id"])


def _assert_422(r: Any, field: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["code"] == "VALIDATION_ERROR" and body["meta"]["request_id"]
    assert body["error"]["details"][0]["field"].startswith(field), body


@pytest.mark.parametrize("method,path,template,field", [
    ("POST", "/api/v1/projects", '{"name": "s", "description": %s}', "description"),
    ("PUT", "/api/v1/projects/{project}", '{"owner": %s}', "owner"),
    ("PUT", "/api/v1/projects/{project}", '{"metadata": {%s: 1}}', "metadata"),
    ("PUT", "/api/v1/pipelines/{pipeline}", '{"description": %s}', "description"),
    ("POST", "/api/v1/runs", '{"pipeline_id": "x", "params": {"k": [%s]}}', "params.k.0"),
    ("POST", "/api/executions", '{"workflow_id": "x", "inputs": {"k": %s}}', "inputs.k"),
])
def test_lone_surrogate_in_a_json_body_is_422(client: TestClient, svc: Services, method: str,
                                              path: str, template: str, field: str) -> None:
    project = _project(client)
    path = path.format(project=project, pipeline=_pipeline(client, project))
    projects, runs = svc.catalog.list_projects()[1], svc.catalog.list_runs(limit=1)[1]
    r = client.request(method, path, content=(template % SURROGATE).encode(), headers=JSON)
    _assert_422(r, field)
    assert "surrogate" in r.json()["error"]["message"]
    assert client.get(f"/api/v1/projects/{project}").status_code == 200
    assert svc.catalog.list_projects()[1] == projects             # nothing was written
    assert svc.catalog.list_runs(limit=1)[1] == runs


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/api/v1/projects", {"name": "deep", "metadata": _deep(300)}, "metadata.a.a"),
    ("PUT", "/api/v1/projects/{project}", {"metadata": _deep(300)}, "metadata.a.a"),
    ("PUT", "/api/v1/projects/{project}", {"metadata": {"x": [[[[[[_deep(70)]]]]]]}},
     "metadata.x.0.0"),
    ("POST", "/api/v1/runs", {"pipeline_id": "x", "params": _deep(100)}, "params.a"),
])
def test_json_nested_too_deep_is_422_and_the_object_stays_readable(
        client: TestClient, method: str, path: str, body: Any, field: str) -> None:
    project = _project(client)
    r = client.request(method, path.format(project=project), json=body)
    _assert_422(r, field)
    assert f"deeper than {MAX_JSON_DEPTH}" in r.json()["error"]["message"]
    got = client.get(f"/api/v1/projects/{project}")    # was a 500 on every read, for good
    assert got.status_code == 200 and got.json()["data"]["metadata"] == {}
    assert client.get("/api/v1/projects").status_code == 200


def test_json_at_the_depth_limit_is_stored_and_shown(client: TestClient) -> None:
    metadata = _deep(MAX_JSON_DEPTH - 1)      # the body is level 1: its deepest object is the limit
    r = client.post("/api/v1/projects", json={"name": "edge", "metadata": metadata})
    assert r.status_code == 201, r.text
    got = client.get(f"/api/v1/projects/{r.json()['data']['id']}")
    assert got.status_code == 200 and got.json()["data"]["metadata"] == metadata
    r = client.post("/api/v1/projects", json={"name": "over", "metadata": _deep(MAX_JSON_DEPTH)})
    _assert_422(r, "metadata")


def test_schedule_params_too_deep_are_422(client: TestClient, svc: Services) -> None:
    """Schedules keep ``params`` too: a deep one made the schedule unreadable (every GET/PUT 500)."""
    from twingraph.server.build import wire_schedules
    from twingraph.server.app import create_app
    wire_schedules(svc, fire=False)
    with TestClient(create_app(svc)) as c:
        project = _project(c)
        pipeline = _pipeline(c, project)
        r = c.post("/api/v1/schedules", json={"project_id": project, "pipeline_id": pipeline,
                                               "kind": "CRON", "expression": "0 0 * * *",
                                               "params": _deep(300)})
        _assert_422(r, "params")
        assert c.get("/api/v1/schedules").json()["meta"]["total"] == 0


def test_json_body_over_the_size_limit_is_413(client: TestClient) -> None:
    body = b'{"name": "big", "description": "' + b"x" * MAX_JSON_BYTES + b'"}'
    r = client.post("/api/v1/projects", content=body, headers=JSON)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("program,field", [
    ('dag_id: "\\udc00"\nnodes:\n  - id: n\n    operation: make_numbers\n', "program.dag_id"),
    ('dag_id: s1\nnodes:\n  - id: n\n    operation: "\\ud800"\n', "program.nodes.0.operation"),
    ('dag_id: s2\nnodes:\n  - id: "\\ud800"\n    operation: make_numbers\n', "program.nodes.0.id"),
    ('dag_id: s3\nnodes:\n  - id: n\n    operation: make_numbers\n    parameters: {n: '
     + "[" * 300 + "]" * 300 + "}\n", "program.nodes.0.parameters.n"),
    (json.dumps({"dag_id": "s4", "nodes": [{"id": "n", "operation": "make_numbers",
                                            "parameters": {"n": "\ud800"}}]}),
     "program.nodes.0.parameters.n"),
])
def test_execute_dynamic_program_values_are_checked(client: TestClient, svc: Services,
                                                    program: str, field: str) -> None:
    runs = svc.catalog.list_runs(limit=1)[1]
    for async_execution in (False, True):
        r = client.post("/api/v1/execute-dynamic",
                        json={"program": program, "async_execution": async_execution})
        _assert_422(r, field)
    assert svc.catalog.list_runs(limit=1)[1] == runs


def test_execute_dynamic_yaml_keys_that_are_not_strings_are_no_500(client: TestClient) -> None:
    """YAML may key a mapping by an int or a date; the checks must not trip over them. A
    node's metadata is stored with its result, as JSON: an int key is JSON's "1", a date key
    is no JSON at all and is refused naming the node (it was ignored before node metadata
    was stored)."""
    program = ("dag_id: keys\nnodes:\n  - id: n\n    operation: make_numbers\n"
               "    metadata: {1: one}\n    parameters: {n: 2}\n")
    r = client.post("/api/v1/execute-dynamic", json={"program": program})
    assert r.status_code == 200, r.text
    r = client.post("/api/v1/execute-dynamic",
                    json={"program": program.replace("{1: one}", "{1: one, 2001-12-14: date}")})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["nodes"] == ["n"]
    assert "node metadata must be JSON data" in r.json()["error"]["message"]


def test_bodies_that_are_not_json_are_left_to_the_routes(client: TestClient) -> None:
    """Not parsed here: FastAPI's own answers (422 for unparsable JSON or a wrong type)."""
    for content, ctype in [(b'{"name": ', "application/json"), (b"\xff\xfe{", "application/json"),
                           (b"[" * 100_000 + b"]" * 100_000, "application/json"),
                           (b'{"name": "x"}', "text/plain"), (b"", "application/json")]:
        r = client.post("/api/v1/projects", content=content, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500, (content[:20], r.status_code, r.text[:200])
        assert r.json()["error"]["code"] and r.json()["meta"]["request_id"]


_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFFFF), max_size=8)
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                     | st.floats(allow_nan=False, allow_infinity=False) | _text,
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_text, inner, max_size=3), max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(metadata=st.dictionaries(_text, _json, max_size=4), description=_text)
def test_any_json_metadata_is_stored_or_refused_never_a_500(
        client: TestClient, metadata: dict[str, Any], description: str) -> None:
    """Arbitrary JSON values, surrogates included (sent as ``\\uXXXX`` escapes)."""
    body = json.dumps({"name": "h", "description": description, "metadata": metadata})
    r = client.post("/api/v1/projects", content=body.encode(), headers=JSON)
    if json_problem(json.loads(body)) is not None:
        _assert_422(r, "")
        return
    assert r.status_code == 201, r.text
    pid = r.json()["data"]["id"]
    got = client.get(f"/api/v1/projects/{pid}")
    assert got.status_code == 200 and got.json()["data"]["metadata"] == metadata
    assert client.delete(f"/api/v1/projects/{pid}").status_code == 200


def test_json_problem_is_iterative_and_names_the_field() -> None:
    assert json_problem({"a": [1, {"b": "ok"}]}) is None
    assert json_problem({"a": [1, {"b": "\udfff"}]}) == (
        "a.1.b", "contains a lone UTF-16 surrogate (\\ud800-\\udfff escape)")
    field, why = json_problem({"k": _deep(5000)}) or ("", "")    # no RecursionError
    assert field.startswith("k.a.a") and "deeper" in why
