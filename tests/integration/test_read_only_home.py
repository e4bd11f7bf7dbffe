"""Inspecting a home writes nothing: ``runs list|show|logs`` open the metadata database
read-only, so a home on a read-only disk (a bind mount here, as root can write any file), or
another user's, can be read; a home with no database yet reads as one with no runs, and
nothing is created. Real CLI subprocesses on real SQLite files; PostgreSQL for the store's own
read-only mode."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twingraph.core.records import RunRecord
from twingraph.core.states import RunState
from twingraph.errors import NotFoundError, StorageError, ValidationError
from twingraph.stores.metadata import SQLMetadataStore

ROOT = Path(__file__).resolve().parents[2]


def _cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TWINGRAPH_HOME=str(home))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "twingraph", *args], env=env,
                          cwd=cwd or home.parent, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def read_only_mount(tmp_path):
    """mount(target) -> a read-only view of ``target`` (a bind mount), undone afterwards."""
    mounts: list[Path] = []

    def mount(target: Path) -> Path:
        view = tmp_path / f"ro{len(mounts)}"
        view.mkdir()
        for command in (["mount", "--bind", str(target), str(view)],
                        ["mount", "-o", "remount,ro,bind", str(view)]):
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                if command[1] == "-o":
                    subprocess.run(["umount", str(view)], capture_output=True)
                pytest.skip(f"cannot make a read-only bind mount here: {out.stderr.strip()}")
        mounts.append(view)
        return view
    yield mount
    for view in mounts:
        subprocess.run(["umount", str(view)], capture_output=True)


@pytest.fixture
def home_with_a_run(tmp_path):
    home = tmp_path / "home"
    out = _cli(home, "run", str(ROOT / "examples" / "quickstart.py"), "--no-progress")
    assert out.returncode == 0, out.stderr
    with SQLMetadataStore(f"sqlite:///{home / 'twingraph.db'}") as md:
        (run,) = md.list_runs()
        nodes = [t.node_id for t in md.get_tasks(run.run_id)]
    return home, run.run_id, nodes


def test_a_home_on_a_read_only_disk_can_be_inspected(home_with_a_run, read_only_mount) -> None:
    home, run_id, nodes = home_with_a_run
    view = read_only_mount(home)
    assert not (view / "twingraph.db-shm").exists()      # the writer ended: no -shm to use
    listed = _cli(view, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout and "SUCCESS" in listed.stdout
    shown = _cli(view, "runs", "show", run_id[:8])
    assert shown.returncode == 0, shown.stderr
    assert all(node in shown.stdout for node in nodes)
    logs = _cli(view, "runs", "logs", run_id)
    assert logs.returncode == 0, logs.stderr
    missing = _cli(view, "runs", "show", "ffffffff")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert sorted(os.listdir(view)) == sorted(os.listdir(home))


def test_changes_left_in_a_write_ahead_log_are_not_read_as_absent(tmp_path, read_only_mount) -> None:
    """A writer killed with its changes still in the WAL, the -shm file gone, the disk now
    read-only: the database cannot be read whole, and the error says why (an immutable open
    would have shown it without those changes)."""
    home = tmp_path / "h"
    home.mkdir()
    db = home / "twingraph.db"
    SQLMetadataStore(f"sqlite:///{db}", create=True).close()
    code = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('PRAGMA wal_autocheckpoint=0'); "
            "c.execute(\"INSERT INTO projects (id, name, metadata, created_at, updated_at) "
            "VALUES ('p1', 'late', '{}', 1, 1)\"); c.commit(); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=False)
    wal = home / "twingraph.db-wal"
    assert wal.stat().st_size > 0
    (home / "twingraph.db-shm").unlink()
    view = read_only_mount(home)
    with pytest.raises(StorageError, match="write-ahead log"):
        SQLMetadataStore(f"sqlite:///{view / 'twingraph.db'}", read_only=True)
    out = _cli(view, "runs", "list")
    assert out.returncode == 2 and "write-ahead log" in out.stderr and "Traceback" not in out.stderr


def test_inspecting_a_home_with_no_database_creates_nothing(tmp_path) -> None:
    home = tmp_path / "never"
    listed = _cli(home, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().count("\n") == 0                    # the header alone
    shown = _cli(home, "runs", "show", "abcdef12")
    assert shown.returncode == 1 and "not found" in shown.stderr
    assert not home.exists()


def test_inspecting_writes_nothing_to_the_database(home_with_a_run) -> None:
    home, run_id, _ = home_with_a_run
    db = home / "twingraph.db"
    before = db.read_bytes()
    assert _cli(home, "runs", "show", run_id).returncode == 0
    assert _cli(home, "runs", "list").returncode == 0
    assert db.read_bytes() == before


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_store_opened_read_only_refuses_writes_and_keeps_its_rows(kind, tmp_path, request) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    import secrets
    first, second = f"r1-{secrets.token_hex(4)}", f"r2-{secrets.token_hex(4)}"
    with SQLMetadataStore(url, create=True) as md:       # (PostgreSQL's is the session's)
        md.write([RunRecord(run_id=first, pipeline="p", state=RunState.PENDING, created_at=1.0)])
    with SQLMetadataStore(url, read_only=True) as ro:
        assert ro.get_run(first) is not None
        with pytest.raises(StorageError):
            ro.write([RunRecord(run_id=second, pipeline="p", state=RunState.PENDING,
                                created_at=2.0)])
    with SQLMetadataStore(url) as md:
        assert md.get_run(first) is not None and md.get_run(second) is None


def test_read_only_asks_for_an_existing_file_and_cannot_create(tmp_path) -> None:
    with pytest.raises(NotFoundError, match="no metadata database"):
        SQLMetadataStore(f"sqlite:///{tmp_path / 'none.db'}", read_only=True)
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(ValidationError):
        SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True, read_only=True)


def test_a_file_name_with_uri_characters_opens_read_only(tmp_path) -> None:
    odd = tmp_path / "a #b%20c"          # the URI the read-only open makes must quote them
    odd.mkdir()
    url = "sqlite:///" + str(odd / "m.db").replace("%", "%25")   # (SQLAlchemy unquotes %)
    SQLMetadataStore(url, create=True).close()
    with SQLMetadataStore(url, read_only=True) as ro:
        assert ro.list_runs() == []
    assert sorted(p.name for p in odd.iterdir() if not p.name.endswith(("-wal", "-shm"))) \
        == ["m.db"]
    shutil.rmtree(odd)
    assert sqlite3.sqlite_version_info >= (3, 22)     # read-only WAL opens need it


def test_another_users_home_can_be_inspected(home_with_a_run, tmp_path) -> None:
    """The home belongs to another user (nobody); this one (root without the capabilities
    that let root write any file) may read, not write it: SQLite said "attempt to write a
    readonly database" for the -shm file it could not make, not "unable to open"."""
    home, run_id, _ = home_with_a_run
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to be another user's reader")
    subprocess.run(["chown", "-R", "nobody:nogroup", str(home)], check=True)
    env = dict(os.environ, TWINGRAPH_HOME=str(home))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    out = subprocess.run(["setpriv", "--inh-caps=-all",
                          "--bounding-set=-dac_override,-dac_read_search,-fowner", "--",
                          sys.executable, "-m", "twingraph", "runs", "list"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert run_id in out.stdout


def test_a_sqlite_uri_names_the_file_the_writer_uses() -> None:
    from twingraph.stores.metadata._engine import sqlite_file
    assert sqlite_file("sqlite:///file://localhost/abs/m.db?uri=true") == Path("/abs/m.db")
    assert sqlite_file("sqlite:///file:/abs/m%20x.db?uri=true&mode=rwc") == Path("/abs/m x.db")
    # without uri=true SQLite takes "file:/abs/m.db" as a relative file name, and so do we
    assert sqlite_file("sqlite:///file:/abs/m.db") == Path("file:/abs/m.db").absolute()
    for word in ("True", "yes", "on", "1"):          # as SQLAlchemy reads the flag
        assert sqlite_file(f"sqlite:///file:/abs/m.db?uri={word}") == Path("/abs/m.db")
    from twingraph.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match="neither true nor false"):
        sqlite_file("sqlite:///file:/abs/m.db?uri=maybe")


@pytest.mark.postgres
def test_postgresql_read_only_keeps_the_urls_own_options(postgres_url) -> None:
    """``?options=-csearch_path=tg`` was replaced by the read-only option: the read-only
    store looked in another schema and called the database unmigrated."""
    import psycopg

    from tests.conftest import ADMIN_URL
    import secrets
    name = f"twingraph_test_opts_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = postgres_url.rsplit("/", 1)[0]
            with psycopg.connect(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", autocommit=True) as c:
                c.execute("CREATE SCHEMA tg")
            url = f"{base}/{name}?options=-csearch_path%3Dtg"
            with SQLMetadataStore(url, create=True) as md:
                md.write([RunRecord(run_id="r-opts", pipeline="p", state=RunState.PENDING,
                                    created_at=1.0)])
            with SQLMetadataStore(url, read_only=True) as ro:
                assert ro.get_run("r-opts") is not None
                with pytest.raises(StorageError):
                    ro.write([RunRecord(run_id="r-no", pipeline="p", state=RunState.PENDING,
                                        created_at=2.0)])
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_WATCHER = """
import sys, time
from pathlib import Path
from twingraph.stores.metadata import SQLMetadataStore
url, run_id, flag = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with SQLMetadataStore(url, read_only=True) as ro:
    print(ro.get_run(run_id).pipeline, flush=True)
    flag.write_text("read")
    deadline = time.time() + 60
    while not flag.read_text() == "changed" and time.time() < deadline:
        time.sleep(0.05)
    print(ro.get_run(run_id).pipeline, flush=True)
"""


def test_a_store_kept_open_on_another_users_home_sees_later_changes(home_with_a_run,
                                                                     tmp_path) -> None:
    """A quiet home this user may not write is opened immutable (a snapshot): a store kept
    open showed its first answer for good. Each read opens anew now."""
    home, run_id, _ = home_with_a_run
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to be another user's reader")
    subprocess.run(["chown", "-R", "nobody:nogroup", str(home)], check=True)
    flag = tmp_path / "flag"
    flag.write_text("")
    os.chmod(tmp_path, 0o777)
    os.chmod(flag, 0o666)
    url = f"sqlite:///{home / 'twingraph.db'}"
    watcher = subprocess.Popen(["setpriv", "--inh-caps=-all",
                                "--bounding-set=-dac_override,-dac_read_search,-fowner", "--",
                                sys.executable, "-c", _WATCHER, url, run_id, str(flag)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while flag.read_text() != "read" and time.monotonic() < deadline:
            time.sleep(0.05)
        with SQLMetadataStore(url) as md:            # the owner's change, checkpointed
            with md._engine.begin() as conn:
                conn.exec_driver_sql("UPDATE runs SET pipeline = 'renamed' WHERE run_id = ?",
                                     (run_id,))
        flag.write_text("changed")
        out, err = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    first, then = out.split()
    assert first != "renamed" and then == "renamed"
