"""``twingraph apikey create|list|revoke``: API keys of the server's metadata database.

The secret is printed once, by ``create``, and is not recoverable: the database keeps only its
SHA-256. Keys act on the database of ``TWINGRAPH_DATABASE_URL`` (default: the embedded SQLite
in ``TWINGRAPH_HOME``), the one ``twingraph server`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from rich.markup import escape

from twingraph.cli.display import console, err_console, ts
from twingraph.errors import TwinGraphError

if TYPE_CHECKING:
    from twingraph.stores.metadata.apikeys import SQLApiKeyStore

apikey_app = typer.Typer(help="API keys for the server (X-API-Key).", no_args_is_help=True)


class Role(str, Enum):
    read = "read"
    write = "write"
    admin = "admin"


@contextmanager
def _keys() -> Iterator[SQLApiKeyStore]:
    from twingraph.settings import Settings
    from twingraph.stores.metadata.apikeys import SQLApiKeyStore
    from twingraph.stores.metadata.store import SQLMetadataStore
    settings = Settings.from_env()
    if settings.database_url.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    store = SQLMetadataStore(settings.database_url, create=True)
    try:
        yield SQLApiKeyStore(store)
    finally:
        store.close()


def _fail(exc: BaseException) -> None:
    err_console.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(1)


@apikey_app.command("create")
def create(name: Annotated[str, typer.Argument(help="What the key is for (shown in listings)")],
           role: Annotated[list[Role], typer.Option("--role", "-r", help="read (GET), write (changes), admin (everything); repeatable")] = [Role.read],  # noqa: B006
           expires_in: Annotated[Optional[str], typer.Option("--expires-in", help="e.g. 30d, 12h, 90m (default: never)")] = None) -> None:
    """Create a key and print its secret (shown this once only)."""
    from twingraph.core.schedule import parse_interval
    try:
        expires_at = time.time() + parse_interval(expires_in) if expires_in else None
        with _keys() as keys:
            rec, secret = keys.create(name, [r.value for r in role], expires_at=expires_at)
    except TwinGraphError as exc:
        _fail(exc)
        return
    console.print(f"created API key [bold]{rec.id}[/bold] ({escape(rec.name)}), roles "
                  f"{', '.join(rec.roles)}, expires {ts(rec.expires_at) if rec.expires_at else 'never'}")
    console.print("secret (store it now, it is not shown again):", style="yellow")
    typer.echo(secret)


@apikey_app.command("list")
def list_keys(all_: Annotated[bool, typer.Option("--all/--active", help="Include revoked and expired keys")] = True) -> None:
    """Keys with their prefix, roles, status and last use (never the secret)."""
    try:
        with _keys() as keys:
            recs = keys.list(include_inactive=all_)
    except TwinGraphError as exc:
        _fail(exc)
        return
    now = time.time()
    table = Table("name", "prefix", "roles", "status", "created", "last used", "expires")
    table.add_column("id", no_wrap=True)          # last and unwrapped: `apikey revoke` needs it
    for r in recs:
        status = r.status(now)
        colour = {"active": "green", "revoked": "red", "expired": "magenta"}[status]
        table.add_row(Text(r.name), r.prefix + "…", ",".join(r.roles), f"[{colour}]{status}[/]",
                      ts(r.created_at), ts(r.last_used_at) if r.last_used_at else "-",
                      ts(r.expires_at) if r.expires_at else "never", r.id)
    console.print(table)


@apikey_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...)")]) -> None:
    """Revoke a key: the server refuses it from the next request on."""
    try:
        with _keys() as keys:
            rec = keys.revoke(key_id)
    except TwinGraphError as exc:
        _fail(exc)
        return
    console.print(f"revoked API key [bold]{rec.id}[/bold] ({escape(rec.name)}) "
                  f"at {ts(rec.revoked_at)}")


def register(app: typer.Typer) -> None:
    app.add_typer(apikey_app, name="apikey")
