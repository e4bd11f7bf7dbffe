"""tauro-api.md's ``curl`` examples, run by bash against the real server, unchanged but for ids
(and the host:port of the test server in place of ``localhost:8000``).

The document's ETL example runs a pipeline ``daily_etl`` of the project it just created; the
document has no pipeline route, so the test first creates that pipeline with ours
(``POST /api/v1/projects/{id}/pipelines``, a declarative extract -> transform -> load over the
components of ``tests/resources/server_app.py``). When ``jq`` is missing, a small Python stand-in
answers the two filters the document uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import unique
from tests.resources.server_app import etl_definition

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

JQ_SHIM = r"""
if ! command -v jq >/dev/null 2>&1; then
jq() {
  python3 -c '
import json, sys
args = [a for a in sys.argv[1:] if a != "-r"]
value = json.load(sys.stdin)
for key in filter(None, args[0].split(".")):
    value = value[key]
print(value if ("-r" in sys.argv and isinstance(value, str)) else json.dumps(value, indent=2))
' "$@"
}
fi
"""


def sh(server: Any, script: str, **env: str) -> str:
    """Run ``script`` with bash, the doc's ``http://localhost:8000`` pointing at ``server``."""
    script = script.replace("http://localhost:8000", server.base_url)
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + JQ_SHIM + script],
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{script}\n{proc.stderr}"
    return proc.stdout


def sh_json(server: Any, script: str, **env: str) -> Any:
    return json.loads(sh(server, script, **env))


def assert_envelope(body: dict[str, Any]) -> None:
    assert set(body) == {"data", "meta"}, body
    assert body["meta"]["request_id"].startswith("req_")
    assert body["meta"]["timestamp"].endswith("Z")


def poll_until_done(server: Any, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        # 4. Monitor progress (the document's command, without jq so the whole run is checked)
        body = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs/$RUN"', RUN=run_id)
        assert_envelope(body)
        if body["data"]["state"] in ("SUCCESS", "FAILED", "CANCELLED"):
            return body["data"]
        assert time.monotonic() < deadline, f"run {run_id} still {body['data']['state']}"
        time.sleep(0.1)


def test_complete_etl_pipeline_example(server):
    # 1. Create project
    project = sh(server, """
PROJECT=$(curl -s -X POST http://localhost:8000/api/v1/projects \\
  -H "Content-Type: application/json" \\
  -d '{"name": "etl_project"}' | jq -r '.data.id')
echo "$PROJECT"
""").strip()
    assert project and project != "null", project
    # (ours) the project's pipeline daily_etl, which the document takes as given
    created = sh_json(server, """
curl -s -X POST "http://localhost:8000/api/v1/projects/$PROJECT/pipelines" \\
  -H "Content-Type: application/json" -d "$BODY"
""", PROJECT=project, BODY=json.dumps({"name": "daily_etl",
                                       **etl_definition(date=unique("2025-01-26"))}))
    assert_envelope(created)
    assert created["data"]["name"] == "daily_etl" and created["data"]["project_id"] == project
    assert [n["id"] for n in created["data"]["nodes"]] == ["extract", "transform", "load"]

    # 2. Create run
    run_body = sh_json(server, """
curl -s -X POST http://localhost:8000/api/v1/runs \\
  -H "Content-Type: application/json" \\
  -d "{
    \\"project_id\\": \\"$PROJECT\\",
    \\"pipeline_id\\": \\"daily_etl\\",
    \\"params\\": {\\"date\\": \\"2025-01-26\\"}
  }"
""", PROJECT=project)
    assert_envelope(run_body)
    run = run_body["data"]
    assert run["state"] == "PENDING" and run["created_at"].endswith("Z")
    assert run["params"] == {"date": "2025-01-26"} and run["project_id"] == project
    same_id = sh(server, """echo "$BODY" | jq -r '.data.id'""", BODY=json.dumps(run_body)).strip()
    assert same_id == run["id"]

    # 3. Start execution
    started = sh_json(server, 'curl -s -X POST "http://localhost:8000/api/v1/runs/$RUN/start"',
                      RUN=run["id"])
    assert started["data"]["status"] == "accepted"
    assert started["data"]["run_id"] == run["id"]
    assert started["data"]["status_url"] == f"/api/v1/runs/{run['id']}"

    done = poll_until_done(server, run["id"])
    assert done["state"] == "SUCCESS", done
    assert done["started_at"] and done["ended_at"] and done["duration_seconds"] >= 0
    progress = sh_json(server, """curl "http://localhost:8000/api/v1/runs/$RUN" | jq '.data.progress'""",
                       RUN=run["id"])
    # extract, transform, load (+ one selection step per sourceHandle, see service.definitions)
    assert progress["total_tasks"] >= 3
    assert progress["completed_tasks"] == progress["total_tasks"]
    assert progress["failed_tasks"] == 0

    # 5. Get logs
    errors = sh_json(server, 'curl "http://localhost:8000/api/v1/runs/$RUN/logs?level=ERROR"',
                     RUN=run["id"])
    assert_envelope(errors)
    assert errors["data"] == [] and errors["meta"]["total"] == 0
    warnings = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs/$RUN/logs?level=WARNING"',
                       RUN=run["id"])
    assert [e["message"] for e in warnings["data"]] == ["loading 3 rows"]
    assert warnings["data"][0]["level"] == "WARNING" and warnings["meta"]["total"] == 1
    every = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs/$RUN/logs?limit=2&offset=1"',
                    RUN=run["id"])
    assert every["meta"] == {**every["meta"], "total": 3, "limit": 2, "offset": 1}
    assert len(every["data"]) == 2

    tasks = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs/$RUN/tasks"', RUN=run["id"])
    assert {"extract", "transform", "load"} <= {t["id"] for t in tasks["data"]}
    assert all(t["state"] == "SUCCESS" for t in tasks["data"])

    stats = sh_json(server, 'curl -s "http://localhost:8000/api/v1/projects/$PROJECT/statistics"',
                    PROJECT=project)["data"]
    assert stats["total_pipelines"] == 1 and stats["total_runs"] == 1, stats

    # Automated Daily Scheduling: create the daily 2 AM schedule, backfill 30 days
    sched = sh_json(server, """
curl -s -X POST http://localhost:8000/api/v1/schedules \\
  -H "Content-Type: application/json" \\
  -d "{
    \\"project_id\\": \\"$PROJECT\\",
    \\"pipeline_id\\": \\"daily_etl\\",
    \\"kind\\": \\"CRON\\",
    \\"expression\\": \\"0 2 * * *\\",
    \\"enabled\\": true,
    \\"timeout_seconds\\": 7200
  }"
""", PROJECT=project)
    assert_envelope(sched)
    s = sched["data"]
    assert s["kind"] == "CRON" and s["expression"] == "0 2 * * *" and s["enabled"] is True
    assert s["timeout_seconds"] == 7200 and s["project_id"] == project

    filled = sh_json(server, """
curl -s -X POST http://localhost:8000/api/v1/schedules/$SCHED/backfill \\
  -H "Content-Type: application/json" \\
  -d '{"count": 30}'
""", SCHED=s["id"])["data"]
    assert filled["count"] == 30 and len(filled["dates"]) == 30
    assert all(d.endswith("T02:00:00Z") for d in filled["dates"]), filled["dates"][:3]
    assert filled["dates"] == sorted(filled["dates"])
    runs = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs?schedule_id=$SCHED&limit=100"',
                   SCHED=s["id"])
    assert runs["meta"]["total"] == 30
    def instant(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert sorted(instant(r["params"]["logical_date"]) for r in runs["data"]) == \
        sorted(instant(d) for d in filled["dates"])
    # Disable Schedule (so that it never fires at 02:00 under a later test)
    off = sh_json(server, 'curl -s -X POST http://localhost:8000/api/v1/schedules/$SCHED/disable',
                  SCHED=s["id"])["data"]
    assert off["enabled"] is False


def test_quick_start_examples(server):
    # Create a Project (the Quick Start body)
    proj = sh_json(server, """
curl -s -X POST http://localhost:8000/api/v1/projects \\
  -H "Content-Type: application/json" \\
  -d '{
    "name": "my_project",
    "description": "My first pipeline project"
  }'
""")
    assert_envelope(proj)
    assert proj["data"]["name"] == "my_project"
    assert proj["data"]["description"] == "My first pipeline project"
    listed = sh_json(server, 'curl "http://localhost:8000/api/v1/projects?limit=20&offset=0"')
    assert listed["meta"]["limit"] == 20 and listed["meta"]["offset"] == 0
    assert "my_project" in [p["name"] for p in listed["data"]]

    # Create and Execute a Pipeline: the server's loaded @pipeline etl_python, by its id
    default = next(p for p in listed["data"] if p["name"] == "default")
    pipes = sh_json(server, 'curl -s "http://localhost:8000/api/v1/projects/$P/pipelines"',
                    P=default["id"])["data"]
    etl = next(p for p in pipes if p["name"] == "etl_python")
    assert etl["kind"] == "python"
    run = sh_json(server, """
curl -X POST http://localhost:8000/api/v1/runs \\
  -H "Content-Type: application/json" \\
  -d "{
    \\"project_id\\": \\"$PROJ\\",
    \\"pipeline_id\\": \\"$PIPE\\",
    \\"params\\": {\\"date\\": \\"2025-01-26\\"}
  }"
""", PROJ=default["id"], PIPE=etl["id"])["data"]
    assert run["state"] == "PENDING"
    sh(server, 'curl -X POST http://localhost:8000/api/v1/runs/$RUN/start', RUN=run["id"])
    done = poll_until_done(server, run["id"])
    # The params it ran with: the given date and the pipeline's defaults for the rest
    # (recorded, so that a run adopted after a default was edited keeps its own).
    assert done["state"] == "SUCCESS"
    assert done["params"] == {"date": "2025-01-26", "n": 3, "factor": 2}
    assert done["pipeline_id"] == etl["id"]

    # Cancel Run with a reason (a PENDING run), then the documented list filters
    other = sh_json(server, """
curl -s -X POST http://localhost:8000/api/v1/runs -H "Content-Type: application/json" \\
  -d "{\\"pipeline_id\\": \\"etl_python\\", \\"params\\": {\\"n\\": 2}}"
""")["data"]
    cancelled = sh_json(server, """
curl -s -X POST http://localhost:8000/api/v1/runs/$RUN/cancel -H "Content-Type: application/json" \\
  -d '{"reason": "User requested cancellation"}'
""", RUN=other["id"])["data"]
    assert cancelled["state"] == "CANCELLED"
    assert "User requested cancellation" in (cancelled["error"] or "")
    by_state = sh_json(server, """
curl -s "http://localhost:8000/api/v1/runs?pipeline_id=$PIPE&state=CANCELLED&sort=-created_at"
""", PIPE=etl["id"])
    assert other["id"] in [r["id"] for r in by_state["data"]]
    assert {r["state"] for r in by_state["data"]} == {"CANCELLED"}
    assert {r["pipeline_id"] for r in by_state["data"]} == {etl["id"]}
    again = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                            f"{server.base_url}/api/v1/runs/{other['id']}/start"],
                           capture_output=True, text=True, timeout=30)
    assert again.stdout == "409"


def test_documented_error_shapes(server):
    # duplicate project name -> 409 CONFLICT
    name = f"dup_{server.backend}"
    first = sh_json(server, """curl -s -X POST http://localhost:8000/api/v1/projects \\
  -H "Content-Type: application/json" -d "{\\"name\\": \\"$NAME\\"}" """, NAME=name)
    assert "data" in first
    dup = sh_json(server, """curl -s -X POST http://localhost:8000/api/v1/projects \\
  -H "Content-Type: application/json" -d "{\\"name\\": \\"$NAME\\"}" """, NAME=name)
    assert dup["error"]["code"] == "CONFLICT" and dup["meta"]["request_id"].startswith("req_")
    # invalid run parameters -> 422 VALIDATION_ERROR with field details; nothing written
    before = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs?limit=1"')["meta"]["total"]
    bad = sh_json(server, """curl -s -X POST http://localhost:8000/api/v1/runs \\
  -H "Content-Type: application/json" -d '{"project_id": "proj_123", "params": "x"}'""")
    assert bad["error"]["code"] == "VALIDATION_ERROR"
    fields = {d["field"] for d in bad["error"]["details"]}
    assert {"pipeline_id", "params"} <= fields, bad
    unknown = sh_json(server, """curl -s -X POST http://localhost:8000/api/v1/runs \\
  -H "Content-Type: application/json" -d '{"project_id": "proj_123", "pipeline_id": "pipe_etl"}'""")
    assert unknown["error"]["code"] in ("NOT_FOUND", "VALIDATION_ERROR"), unknown
    after = sh_json(server, 'curl -s "http://localhost:8000/api/v1/runs?limit=1"')["meta"]["total"]
    assert after == before
    # unknown id -> 404 NOT_FOUND; limit above 100 -> 422
    missing = sh_json(server, 'curl -s http://localhost:8000/api/v1/runs/run_missing')
    assert missing["error"]["code"] == "NOT_FOUND"
    over = sh_json(server, 'curl -s "http://localhost:8000/api/v1/projects?limit=101"')
    assert over["error"]["code"] == "VALIDATION_ERROR"
    # health, info, statistics, metrics
    health = sh_json(server, "curl -s http://localhost:8000/health")
    assert health["status"] == "healthy" and health["version"]
    assert sh_json(server, "curl -s http://localhost:8000/api/v1/info")["data"]["name"] == "TwinGraph"
    stats = sh_json(server, "curl -s http://localhost:8000/api/v1/statistics")["data"]
    assert stats["total_projects"] >= 1, stats
    metrics = sh(server, "curl -s http://localhost:8000/metrics")
    assert "# TYPE" in metrics
