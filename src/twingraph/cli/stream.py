"""``twingraph stream ...``: run a job manager, and talk to one over HTTP.

Commands: ``jobmanager`` (serve the REST face), ``submit``, ``list``, ``status``, ``cancel``,
``savepoint``, ``restore``. The client commands use ``--url`` (default ``$TWINGRAPH_STREAM_URL``
or http://127.0.0.1:8081) and send ``$TWINGRAPH_API_KEY`` as ``X-API-Key`` when it is set.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(help="Streaming jobs: the job manager and its client.", no_args_is_help=True)

Url = Annotated[str, typer.Option("--url", help="job manager base URL",
                                  envvar="TWINGRAPH_STREAM_URL")]
DEFAULT_URL = "http://127.0.0.1:8081"


def _call(method: str, url: str, path: str, **kw: Any) -> Any:
    import httpx

    headers = {"X-API-Key": os.environ["TWINGRAPH_API_KEY"]} if os.environ.get("TWINGRAPH_API_KEY") else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=120, **kw)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the job manager at {url}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if r.status_code >= 400:
        typer.echo(f"error: {r.status_code} {r.text}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(r.json(), indent=2))
    return r.json()


def _args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep:
            raise typer.BadParameter(f"--arg wants KEY=VALUE, got {p!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@app.command()
def jobmanager(port: Annotated[int, typer.Option(help="port to listen on")] = 8081,
               host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
               slots: Annotated[Optional[int], typer.Option(help="jobs that may run at once")] = None,
               registry: Annotated[bool, typer.Option("--registry/--no-registry",
                                                      help="record jobs in the metadata database (TWINGRAPH_DATABASE_URL)")] = True) -> None:
    """Serve the job manager REST face alone (jobs run embedded in this process).

    With the registry, jobs and checkpoints are recorded in the metadata database, and jobs that
    were running when the job manager last stopped are resumed from their latest checkpoint."""
    import uvicorn

    from twingraph.cli.server import is_loopback
    from twingraph.server.hosts import LoopbackHosts
    from twingraph.stream.jobmanager import create_app
    from twingraph.stream.jobs import JobManager

    if not is_loopback(host):
        # It has no authentication: beyond loopback anyone could start or cancel jobs.
        typer.echo(f"error: the stand-alone job manager has no authentication and binds loopback "
                   f"only, not {host!r}; to serve /jobs beyond this machine use 'twingraph server "
                   "--host ...' with auth (TWINGRAPH_AUTH=required)", err=True)
        raise typer.Exit(2)

    store = None
    if registry:
        from twingraph.settings import Settings
        from twingraph.stores.metadata.store import SQLMetadataStore
        from twingraph.stores.metadata.stream_jobs import SQLStreamJobStore

        store = SQLStreamJobStore(SQLMetadataStore(Settings.from_env().database_url, create=True))
    manager = JobManager(slots=slots, port=port, registry=store)
    resumed = manager.recover()
    if resumed:
        typer.echo(f"resumed {len(resumed)} job(s) from their latest checkpoints: {', '.join(resumed)}")
    # A page on another site that rebinds its name to 127.0.0.1 gets 421 (``LoopbackHosts``).
    uvicorn.run(LoopbackHosts(create_app(manager), also=[host]), host=host, port=port,  # type: ignore[arg-type]
                log_level="warning")


@app.command()
def submit(entrypoint: Annotated[str, typer.Argument(help="package.module:function returning a StreamExecutionEnvironment")],
           arg: Annotated[list[str], typer.Option("--arg", "-a", help="KEY=VALUE (JSON values allowed)")] = [],  # noqa: B006
           restore_from: Annotated[Optional[str], typer.Option(help="checkpoint/savepoint directory or 'latest'")] = None,
           url: Url = DEFAULT_URL) -> None:
    """Submit a job."""
    _call("POST", url, "/jobs/submit", json={"entrypoint": entrypoint, "args": _args(arg), "restore_from": restore_from})


@app.command()
def restore(entrypoint: Annotated[str, typer.Argument()], path: Annotated[str, typer.Argument(help="savepoint or checkpoint directory")],
            arg: Annotated[list[str], typer.Option("--arg", "-a")] = [],  # noqa: B006
            url: Url = DEFAULT_URL) -> None:
    """Submit a job restored from a savepoint or checkpoint (the parallelism may differ)."""
    _call("POST", url, "/jobs/submit", json={"entrypoint": entrypoint, "args": _args(arg), "restore_from": path})


@app.command("list")
def list_jobs(url: Url = DEFAULT_URL) -> None:
    """List jobs."""
    _call("GET", url, "/jobs")


@app.command()
def status(job_id: str, url: Url = DEFAULT_URL) -> None:
    """A job's status and metrics."""
    _call("GET", url, f"/jobs/{job_id}/status")


@app.command()
def cancel(job_id: str, with_savepoint: Annotated[bool, typer.Option("--with-savepoint")] = False,
           url: Url = DEFAULT_URL) -> None:
    """Cancel a job, optionally taking a savepoint first."""
    _call("POST", url, f"/jobs/{job_id}/cancel", params={"with_savepoint": str(with_savepoint).lower()})


@app.command()
def savepoint(job_id: str, url: Url = DEFAULT_URL) -> None:
    """Take a savepoint of a running job."""
    _call("POST", url, f"/jobs/{job_id}/savepoint")
