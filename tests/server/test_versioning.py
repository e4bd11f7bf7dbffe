"""Accept-header versioning: the negotiation rule, and what the app answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from twingraph.server.app import create_app
from twingraph.server.versioning import negotiate
from twingraph.service import Services

V = "application/vnd.twingraph.v{}+json"


@pytest.mark.parametrize("accept, served", [
    (None, 2), ("", 2), ("*/*", 2), ("application/json", 2), ("text/html,*/*;q=0.8", 2),
    (V.format(2), 2), (V.format(1), 1), ("application/vnd.twingraph+json", 2),
    ("application/vnd.twingraph.v2.0.0+json", 2), ("Application/VND.TwinGraph.V1+JSON", 1),
    (V.format(3), None), (V.format(0), None), (f"{V.format(3)}, {V.format(4)}", None),
    (f"{V.format(3)}, application/json", 2),            # a fallback the client accepts
    (f"{V.format(1)};q=0.5, {V.format(2)}", 2), (f"{V.format(1)}, {V.format(2)}", 1),
    (f"{V.format(2)};q=0, {V.format(1)};q=0.1", 1), (f"{V.format(2)};q=0", None), ("text/html;q=0", 2),
])
def test_negotiate(accept: str | None, served: int | None) -> None:
    assert negotiate(accept) == served


@pytest.fixture
def client(svc: Services) -> Iterator[TestClient]:
    app = create_app(svc)

    @app.get("/test/version")
    async def version(request: Request) -> dict[str, int]:
        return {"version": request.state.api_version}
    with TestClient(app) as c:
        yield c


def test_responses_name_the_version_served(client: TestClient) -> None:
    for accept, served in ((None, "2"), (V.format(2), "2"), (V.format(1), "1"),
                           ("application/json", "2")):
        resp = client.get("/api/v1/projects", headers={"Accept": accept} if accept else {})
        assert resp.status_code == 200 and resp.headers["X-TwinGraph-API-Version"] == served
        assert "accept" in resp.headers["Vary"].lower()
        resp = client.get("/test/version", headers={"Accept": accept} if accept else {})
        assert resp.json() == {"version": int(served)}
    assert client.get("/docs", headers={"Accept": "text/html"}).status_code == 200
    assert client.get("/api/v1/nope").headers["X-TwinGraph-API-Version"] == "2"   # errors too


def test_unsupported_version_is_406_with_the_supported_ones(client: TestClient,
                                                          svc: Services) -> None:
    resp = client.post("/api/v1/projects", json={"name": "v3"}, headers={"Accept": V.format(3)})
    assert resp.status_code == 406
    body = resp.json()
    assert body["error"]["code"] == "NOT_ACCEPTABLE"
    assert body["error"]["details"][0]["supported_versions"] == ["v1", "v2"]
    assert body["meta"]["request_id"] == resp.headers["X-Request-ID"]
    assert svc.catalog.list_projects()[1] == 0                  # nothing ran
