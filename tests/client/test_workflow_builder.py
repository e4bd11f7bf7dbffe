"""The ``Workflow`` builder and the SDK's request shaping (no server needed: these are pure)."""

from __future__ import annotations

import httpx
import pytest

from tests.resources import server_app as app
from twingraph import BaseComponent, ValidationError, Workflow
from twingraph.client import _calls
from twingraph.client._resources import PipelineCalls, WorkflowCalls
from twingraph.client._wait import classify, ws_url


class Doubler(BaseComponent):
    name = "doubler"

    def execute(self, x):
        return 2 * x


class Unnamed(BaseComponent):
    def execute(self, x):
        return x


def test_documented_builder_shape():
    wf = Workflow(name="My Pipeline", description="d", tags=["prod"])
    assert wf.add_component("load", app.extract, config={"n": 2}) is wf
    wf.add_component("process", app.transform)
    wf.connect("load", "process")
    wf.connect("load", "process", source_handle="rows", target_handle="rows")
    assert wf.to_definition() == {
        "nodes": [{"id": "load", "type": "component", "component": "extract", "config": {"n": 2}},
                  {"id": "process", "type": "component", "component": "transform", "config": {}}],
        "edges": [{"source": "load", "target": "process", "sourceHandle": None, "targetHandle": None},
                  {"source": "load", "target": "process", "sourceHandle": "rows",
                   "targetHandle": "rows"}],
        "metadata": {"description": "d", "tags": ["prod"]}}
    body = wf.to_request()
    assert body["name"] == "My Pipeline" and body["metadata"] == {"description": "d", "tags": ["prod"]}


def test_component_names():
    wf = Workflow(name="names")
    wf.add_component("a", app.load)              # a @component: its registered name
    wf.add_component("b", Doubler({"k": 1}))     # a BaseComponent instance with a name
    wf.add_component("c", Unnamed())             # no name: its spec's (the class name)
    wf.add_component("d", "some_registered_op")  # a name as given
    assert [n["component"] for n in wf.nodes] == ["load", "doubler", "Unnamed", "some_registered_op"]
    with pytest.raises(ValidationError):
        wf.add_component("e", 42)
    with pytest.raises(ValidationError):
        wf.add_component("f", "")


def test_mistakes_are_refused_at_once():
    wf = Workflow(name="w")
    wf.add_component("a", "x").add_component("b", "y").add_component("c", "z")
    with pytest.raises(ValidationError, match="already has a node"):
        wf.add_component("a", "x")
    with pytest.raises(ValidationError, match="no node 'nope'"):
        wf.connect("a", "nope")
    wf.connect("a", "b").connect("b", "c")
    with pytest.raises(ValidationError, match="cycle"):
        wf.connect("c", "a")
    with pytest.raises(ValidationError, match="cycle"):
        wf.connect("b", "b")
    with pytest.raises(ValidationError):
        Workflow(name=" ")
    with pytest.raises(ValidationError, match="no nodes"):
        Workflow(name="empty").to_definition()
    with pytest.raises(ValidationError):
        wf.add_component("d", "x", config=["not", "a", "mapping"])  # type: ignore[arg-type]
    assert len(wf.edges) == 2                      # the refused edges were not added


def test_round_trip_from_a_stored_definition():
    stored = {"nodes": [{"id": "e", "component": "extract", "config": {"n": 1}},
                        {"id": "l", "operation": "load", "parameters": {}}],
              "edges": [{"from": "e", "to": "l", "sourceHandle": "rows", "targetHandle": "rows"}],
              "metadata": {"tags": ["x"]}}
    wf = Workflow.from_definition("copy", stored)
    assert [n["component"] for n in wf.nodes] == ["extract", "load"]
    assert wf.edges == [{"source": "e", "target": "l", "sourceHandle": "rows", "targetHandle": "rows"}]
    assert wf.metadata == {"tags": ["x"]}


def test_request_shaping():
    assert _calls.headers(None, "Bearer abc")["Authorization"] == "Bearer abc"
    assert _calls.headers(None, "abc")["Authorization"] == "Bearer abc"
    assert _calls.headers("tg_k", None)["X-API-Key"] == "tg_k"
    assert "Authorization" not in _calls.headers(None, None)
    assert _calls.headers(None, None)["Accept"] == "application/vnd.twingraph.v2+json"

    wf = Workflow(name="My Pipeline 2").add_component("a", "extract")
    call = WorkflowCalls.create(wf)
    assert (call.method, call.path) == ("POST", "/api/workflows/my-pipeline-2")
    assert call.body["definition"]["nodes"][0]["component"] == "extract"
    assert WorkflowCalls.create({"name": "x", "nodes": [{"id": "a"}]}, workflow_id="a/b").path \
        == "/api/workflows/a%2Fb"                          # ids cannot change the route
    with pytest.raises(ValueError):
        WorkflowCalls.get("")
    assert WorkflowCalls.list(tag="etl", page=None).params == {"tag": "etl"}
    pipe = PipelineCalls.create("proj_1", wf)
    assert pipe.body["name"] == "My Pipeline 2" and "nodes" in pipe.body["definition"]
    with pytest.raises(ValueError):
        PipelineCalls.create("proj_1", {"nodes": []})     # a dict definition needs name=

    assert ws_url(httpx.URL("http://h:8000")) == "ws://h:8000/ws"
    assert ws_url(httpx.URL("https://h/prefix/")) == "wss://h/prefix/ws"


def test_event_classification():
    final = '{"event": "execution:update", "data": {"execution_id": "r1", "status": "completed"}}'
    assert classify(final, "r1") == "final"
    assert classify(final, "r2") is None
    running = '{"event": "execution:update", "data": {"execution_id": "r1", "status": "running"}}'
    assert classify(running, "r1") is None
    node_err = '{"event": "error", "data": {"execution_id": "r1", "node_id": "n", "error": "x"}}'
    assert classify(node_err, "r1") is None
    not_found = '{"event": "error", "data": {"execution_id": "r1", "code": "NOT_FOUND"}}'
    assert classify(not_found, "r1") == "check"
    assert classify("not json", "r1") is None


def test_an_input_given_twice_is_refused_at_once():
    """Two edges into one targetHandle (one value would be dropped; the server refuses it):
    the builder accepted it."""
    wf = Workflow("h").add_component("a", "x").add_component("b", "x").add_component("s", "y")
    wf.connect("a", "s", target_handle="xs")
    with pytest.raises(ValidationError, match="already has an input 'xs'"):
        wf.connect("b", "s", target_handle="xs")
    wf.connect("b", "s", target_handle="ys")
    assert [e["targetHandle"] for e in wf.edges] == ["xs", "ys"]
