"""Notifications on run end: callables and webhooks (a real HTTP server on 127.0.0.1)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from tests.resources import behaviours as b
from twingraph import pipeline


def test_callable_and_webhook_notifications(engine):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    calls = []
    try:
        @pipeline(name="notify_ok", notifications={"on_end": calls.append, "on_success": url})
        def ok():
            return b.quick(x=1)

        @pipeline(name="notify_bad", notifications={"on_failure": [url, calls.append]})
        def bad():
            return b.fails(x=1)

        r1 = ok.run(engine=engine)
        r2 = bad.run(engine=engine)
    finally:
        srv.shutdown()
    assert [c["status"] for c in calls] == ["SUCCESS", "FAILED"]
    assert [(m["run_id"], m["status"]) for m in received] == [(r1.run_id, "SUCCESS"),
                                                              (r2.run_id, "FAILED")]
    assert "fails-0" in received[1]["failures"]
