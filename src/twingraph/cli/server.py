"""``twingraph server``: the API, the schedule firer and local execution in one process."""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
from typing import Annotated

import typer
from rich.markup import escape

from twingraph.cli.display import console, err_console


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to loopback addresses."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class LogLevel(str, enum.Enum):
    """The levels both ``logging`` and uvicorn know (``trace``, ``warn`` are one's only)."""
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def server(host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
           port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
           load: Annotated[list[str], typer.Option("--load", help="FILE.py or module to load (repeatable)")] = [],  # noqa: B006
           log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.info,
           no_schedules: Annotated[bool, typer.Option("--no-schedules", help="Do not fire schedules")] = False) -> None:
    """Start the API server on the embedded default (or $TWINGRAPH_DATABASE_URL)."""
    import uvicorn

    from twingraph.server.build import build_app
    from twingraph.settings import Settings
    level = log_level.value          # one both logging and uvicorn know
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    # Bound before anything starts: a port in use was reported after "TwinGraph server on
    # ..." and "Application startup complete" (and with schedules already started).
    try:
        sock = _listen(host, port)
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot listen on {escape(host)}:{port}: "
                          f"{escape(exc.strerror or str(exc))}")
        raise typer.Exit(2) from None
    port = sock.getsockname()[1]       # the port given, or the one port 0 got
    try:
        app = build_app(settings, load=load, schedules=not no_schedules,
                        exposed=not is_loopback(host))
    except Exception as exc:  # noqa: BLE001 - shown to the user, exit 2
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    served: object = app
    if is_loopback(host):            # no auth needed here: refuse rebound host names
        from twingraph.server.hosts import LoopbackHosts
        served = LoopbackHosts(app, also=[host])
    console.print(f"TwinGraph server on http://{escape(host)}:{port} (docs at /docs)")
    # No permessage-deflate: compressing each small /ws frame costs ~4x the send itself.
    config = uvicorn.Config(served, host=host, port=port, log_level=level,  # type: ignore[arg-type]
                            access_log=False, ws_per_message_deflate=False)
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound to ``host:port`` (``OSError`` if it cannot be)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)      # not inheritable (the default): a child a task starts must
                               # not keep the port after the server is gone
    except OSError:
        sock.close()
        raise
    return sock
