"""Run-end notifications: callables are called, http(s) URLs get the summary POSTed as JSON.

Targets: a callable, a URL, a list of them, or a dict ``{'on_end'|'on_success'|'on_failure':
target}``. Each is told on a daemon thread of its own (a webhook's POST with a 10 s timeout on
each read); a failing target is logged (and told to ``report``: the run's own log) and never
changes the run's outcome.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from twingraph.engine.snapshot import error_text

log = logging.getLogger("twingraph.notify")

#: How long ``notify(wait=True)`` waits, in all, for its webhooks (each POST has its own timeout,
#: ``POST_TIMEOUT``, which bounds each read, not a whole response).
WAIT_SECONDS = 12.0
#: Seconds a run's end waits for a notification callable (a user's code: an email, a chat
#: message) before it reports it and returns without it.
CALLABLE_WAIT = 60.0
POST_TIMEOUT = 10.0


def _targets(spec: Any, status: str) -> list[Any]:
    if isinstance(spec, Mapping):
        out: list[Any] = []
        keys = ["on_end", "on_success" if status == "SUCCESS" else "on_failure"]
        for k in keys:
            out.extend(_targets(spec.get(k), status) if k in spec else [])
        return out
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [t for s in spec for t in _targets(s, status)]
    return [spec]


def _post(url: str, summary: dict[str, Any],
          report: Callable[[str], None] | None = None) -> None:
    import urllib.request     # here: http.client and email cost every run ~0.6 MB and ~10 ms

    try:
        body = json.dumps(summary, default=str).encode()
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "twingraph-notify"})
        # the URL is user-configured (hence the noqa)
        with urllib.request.urlopen(req, timeout=POST_TIMEOUT) as resp:  # noqa: S310
            resp.read()
    except Exception as exc:  # noqa: BLE001
        shown = _shown_url(url)
        log.warning("notification to %s failed: %s", shown, exc)
        _report(report, f"notification to {shown} failed: {error_text(exc)}")


def _shown_url(url: str) -> str:
    """A webhook URL as logs show it: its scheme and host only. Its user:password, path and
    query are often the secret (a chat service's hook URL is one), and the run's log is read
    by whoever may read the run."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "a malformed URL"
    rest = "/..." if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _report(report: Callable[[str], None] | None, message: str) -> None:
    if report is not None:
        try:
            report(message)
        except Exception:  # noqa: BLE001 - the logger has it already
            pass


def notify(spec: Any, *, summary: dict[str, Any], wait: bool = False,
           report: Callable[[str], None] | None = None) -> list[threading.Thread]:
    """Tell every target of ``spec`` about a run's end; ``report(message)`` hears of each
    target that failed. Each target is told on a thread of its own; with ``wait``, for up to
    ``WAIT_SECONDS`` (a webhook) or ``CALLABLE_WAIT`` (a callable), side by side: one that
    takes longer is reported and left to finish on its own. A callable used to be called on
    the caller's thread, and one that hung (an HTTP call without a timeout) held the
    pipeline's call for as long, the run long recorded as ended."""
    told: list[tuple[threading.Thread, float, str]] = []
    start = time.monotonic()
    for target in _targets(spec, summary["status"]):
        if callable(target):
            name = f"notification callable {getattr(target, '__qualname__', target)}"
            t = threading.Thread(target=_call, args=(target, name, summary, report),
                                 daemon=True, name="twingraph-notifier")
            limit = CALLABLE_WAIT
        else:
            name = f"webhook {_shown_url(target)}"
            t = threading.Thread(target=_post, args=(target, summary, report), daemon=True,
                                 name="twingraph-webhook")
            limit = WAIT_SECONDS
        t.start()
        told.append((t, start + limit, name))
    if wait:
        # One deadline for each kind: they run side by side, so N slow ones hold the run
        # about as long as one (not N times as long, joined one after another).
        for t, deadline, name in told:
            t.join(max(0.0, deadline - time.monotonic()))
        for t, deadline, name in told:
            if t.is_alive():
                message = (f"{name} had not returned after {deadline - start:g} s: not waited "
                           f"for any longer")
                log.warning("%s", message)
                _report(report, message)
    return [t for t, _, _ in told]


def _call(target: Callable[[dict[str, Any]], Any], name: str, summary: dict[str, Any],
          report: Callable[[str], None] | None) -> None:
    try:
        target(summary)
    except BaseException as exc:  # noqa: BLE001 - a notifier never changes the outcome
        # (``sys.exit()`` in one made the run's caller exit; the targets after it were not
        # told)
        log.warning("%s failed: %s", name, error_text(exc))
        _report(report, f"{name} failed: {error_text(exc)}")
