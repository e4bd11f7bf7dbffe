"""Notifications on run end: callables and webhooks (a real HTTP server on 127.0.0.1).

``monkeypatch`` only shortens ``WAIT_SECONDS`` (how long a run waits for its webhooks, 12 s)
so that the test of slow webhooks takes about a second."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

from tests.resources import behaviours as b
from twingraph import pipeline
from twingraph.core.states import RunState


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


def test_slow_webhooks_share_one_deadline(engine, monkeypatch):
    """Webhooks are POSTed side by side, and the run waits for them all under one deadline:
    two hooks that never finish hold it about as long as one, not twice as long. Real HTTP
    servers on 127.0.0.1 that answer a byte at a time (never silent for a read timeout)."""
    import time

    from twingraph.engine import notify as notify_module

    stop = threading.Event()
    posted = []

    class Trickle(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                while not stop.wait(0.1):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:
                pass

        def log_message(self, *a):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Trickle) for _ in range(2)]
    for srv in servers:
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    hooks = [f"http://127.0.0.1:{srv.server_address[1]}/hook" for srv in servers]
    monkeypatch.setattr(notify_module, "WAIT_SECONDS", 1.0, raising=False)
    try:
        @pipeline(name="notify_slow", notifications=hooks)
        def p():
            return b.quick(x=1)

        t0 = time.monotonic()
        r = p.run(engine=engine)
        took = time.monotonic() - t0
    finally:
        stop.set()
        for srv in servers:
            srv.shutdown()
            srv.server_close()
    assert r.state is RunState.SUCCESS, r.error
    assert sorted(m["run_id"] for m in posted) == [r.run_id, r.run_id]
    assert 0.9 <= took < 1.9, took        # one deadline of 1 s (joined in turn: 2 s or more)


def test_a_failing_notification_is_written_to_the_run_log(engine):
    """A webhook that answers 500 and a callable that raises were only in the Python log:
    `twingraph runs logs` did not show that the run's notifications failed."""
    class Broken(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *a):
            pass

    def raises(summary):
        raise RuntimeError("pager is down")

    srv = HTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    try:
        @pipeline(name="notify_broken", notifications=[url, raises])
        def p():
            return b.quick(x=2)
        r = p.run(engine=engine)
    finally:
        srv.shutdown()
    assert r.state is RunState.SUCCESS                     # the run's outcome stands
    engine.recorder.flush()
    lines = [log.message for log in engine.metadata.get_logs(r.run_id)]
    assert any("notification to" in m and "500" in m for m in lines), lines
    assert any("pager is down" in m for m in lines), lines
