"""``migrate.HEAD`` (what opening a store checks a database against, without Alembic) is the
head of the migration scripts as Alembic reads them; a new migration must move it."""
from twingraph.stores.metadata import migrate


def test_head_is_the_head_of_the_migration_scripts() -> None:
    assert migrate.head() == migrate.HEAD == migrate.scripts_head()


def _old_database_with_a_run(url: str) -> None:
    """A database at revision 0001 holding a finished run with a task, an attempt, a log line
    and a lineage edge (what an older TwinGraph left)."""
    from sqlalchemy import create_engine, text
    migrate.upgrade(url, "0001")
    eng = create_engine(url)
    try:
        with eng.begin() as c:
            c.execute(text("INSERT INTO projects (id,name,metadata,created_at,updated_at) "
                           "VALUES ('proj_1','default','{}',1,1)"))
            c.execute(text("INSERT INTO runs (run_id,pipeline,project,state,params,config,"
                           "source,tags,created_at) VALUES ('r1','p','default','SUCCESS','{}',"
                           "'{}','{}','{}',1)"))
            c.execute(text("INSERT INTO tasks (run_id,node_id,component,state,platform,attempts,"
                           "fence,\"order\",inputs,created_at) VALUES ('r1','a-0','a','SUCCESS',"
                           "'local',1,1,0,'{}',1)"))
            c.execute(text("INSERT INTO logs (run_id,at,level,message) "
                           "VALUES ('r1',1,'info','hello')"))
            c.execute(text("INSERT INTO task_attempts (run_id,node_id,attempt,fence,state,"
                           "executor,started_at) VALUES ('r1','a-0',1,1,'SUCCESS','local',1)"))
            c.execute(text("INSERT INTO lineage_edges (run_id,src,dst,kind,properties,digest) "
                           "VALUES ('r1','a-0','r1','BELONGS_TO','{}','d1')"))
    finally:
        eng.dispose()


def _counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("runs", "tasks", "task_attempts", "logs", "lineage_edges")}
    finally:
        eng.dispose()


def test_upgrading_an_old_database_keeps_every_runs_history(tmp_path, postgres_url) -> None:
    """0002 rebuilds ``runs`` on SQLite (batch mode); with foreign keys on, its DROP cascaded:
    every run's tasks, attempts, logs and lineage edges were deleted by ``db upgrade``.
    PostgreSQL (a database of its own, at 0001) must keep them as well."""
    import secrets

    import psycopg

    from tests.conftest import ADMIN_URL
    name = f"twingraph_test_upg_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            pg = postgres_url.rsplit("/", 1)[0] + f"/{name}"
            for url in (f"sqlite:///{tmp_path / 'old.db'}", pg):
                _old_database_with_a_run(url)
                assert migrate.upgrade(url) == migrate.HEAD
                assert _counts(url) == {"runs": 1, "tasks": 1, "task_attempts": 1, "logs": 1,
                                        "lineage_edges": 1}, url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema(url: str) -> dict[str, dict[str, object]]:
    """Every table as the database describes it: columns with types, nullability and
    defaults, the primary key, foreign keys, indexes, unique and check constraints."""
    from sqlalchemy import create_engine, inspect
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            insp = inspect(c)
            out: dict[str, dict[str, object]] = {}
            for t in sorted(insp.get_table_names()):
                out[t] = {
                    "columns": [(col["name"], str(col["type"]), col["nullable"], col["default"])
                                for col in insp.get_columns(t)],
                    "pk": insp.get_pk_constraint(t),
                    "fks": sorted((fk["name"] or "", tuple(fk["constrained_columns"]),
                                   fk["referred_table"], tuple(fk["referred_columns"]),
                                   tuple(sorted(fk["options"].items())))
                                  for fk in insp.get_foreign_keys(t)),
                    "indexes": sorted((ix["name"] or "", tuple(ix["column_names"]),
                                       bool(ix["unique"])) for ix in insp.get_indexes(t)),
                    "uniques": sorted((u["name"] or "", tuple(u["column_names"]))
                                      for u in insp.get_unique_constraints(t)),
                    "checks": sorted((ck["name"] or "", ck["sqltext"])
                                     for ck in insp.get_check_constraints(t)),
                }
            return out
    finally:
        eng.dispose()


def test_a_new_database_built_from_the_models_is_the_one_the_scripts_make(
        tmp_path, postgres_url) -> None:
    """``upgrade`` builds an empty database from the models and stamps it at head (no
    Alembic); the migration scripts, run from nothing, must give the same tables, columns,
    types, defaults, keys, indexes and constraints, on SQLite and on PostgreSQL. Afterwards the
    scripts accept the built database as theirs."""
    import secrets

    import psycopg

    from tests.conftest import ADMIN_URL
    names = [f"twingraph_test_new_{secrets.token_hex(4)}" for _ in range(2)]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = postgres_url.rsplit("/", 1)[0]
            pairs = [(f"sqlite:///{tmp_path / 'built.db'}", f"sqlite:///{tmp_path / 'migrated.db'}"),
                     (f"{base}/{names[0]}", f"{base}/{names[1]}")]
            for built, migrated in pairs:
                assert migrate.upgrade(built) == migrate.HEAD
                assert migrate.upgrade(migrated, from_models=False) == migrate.HEAD
                got, want = _schema(built), _schema(migrated)
                assert set(got) == set(want), built
                for table in want:
                    assert got[table] == want[table], (built, table)
                assert migrate.upgrade(built, from_models=False) == migrate.HEAD
                assert migrate.upgrade(built) == migrate.HEAD
        finally:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_first_process_on_a_new_home_does_not_import_alembic(tmp_path) -> None:
    import subprocess
    import sys
    code = ("import sys; from twingraph.stores.metadata import SQLMetadataStore, migrate; "
            f"s = SQLMetadataStore('sqlite:///{tmp_path / 'm.db'}', create=True); "
            "print(migrate.current(s._engine), 'alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [migrate.HEAD, "False"]


_AUTOGENERATE = """
import glob, shutil, sys
import sqlalchemy as sa
from pathlib import Path
from twingraph.stores.metadata import migrate, schema
copy = sys.argv[1]
shutil.copytree(migrate.MIGRATIONS_DIR, copy)
migrate.MIGRATIONS_DIR = Path(copy)
schema.runs.append_column(sa.Column("note", sa.String()))     # a developer's model change
migrate.revision("add runs.note")
(new,) = [f for f in glob.glob(copy + "/versions/*.py") if not Path(f).name.startswith("000")]
text = Path(new).read_text()
print(text[text.index("def upgrade"):text.index("def downgrade")])
"""


def test_a_new_revision_is_autogenerated_against_what_the_scripts_make(tmp_path) -> None:
    """``migrate revision`` compares the models with a scratch database at head: built from
    the models, it already had the change, and every new revision came out empty."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _AUTOGENERATE, str(tmp_path / "migrations")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "add_column" in out.stdout and "note" in out.stdout, out.stdout


def test_a_database_at_head_is_upgraded_without_alembic(tmp_path) -> None:
    """What the processes that lose the race to build a new database find under the lock."""
    import subprocess
    import sys
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, from_models=False)
    code = (f"import sys; from twingraph.stores.metadata import migrate; "
            f"print(migrate.upgrade({url!r}), 'alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [migrate.HEAD, "False"]


def test_a_failed_migration_is_one_line_naming_the_database(tmp_path) -> None:
    import sqlite3

    import pytest

    from twingraph.errors import StorageError
    db = tmp_path / "shared.db"
    with sqlite3.connect(db) as c:              # another application's table of the same name
        c.execute("CREATE TABLE logs (x INTEGER)")
    with pytest.raises(StorageError) as caught:
        migrate.upgrade(f"sqlite:///{db}")
    said = str(caught.value)
    assert "\n" not in said and str(db) in said and "logs" in said, said
    assert "sqlalche.me" not in said and "CREATE TABLE" not in said


def test_another_applications_alembic_revision_is_named_as_such(tmp_path) -> None:
    import sqlite3

    import pytest

    from twingraph.errors import ConfigurationError
    from twingraph.stores.metadata import SQLMetadataStore
    db = tmp_path / "theirs.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        c.execute("INSERT INTO alembic_version VALUES ('ab12cd34ef56')")
        c.execute("CREATE TABLE customers (id INTEGER)")
    for attempt in (lambda: migrate.upgrade(f"sqlite:///{db}"),
                    lambda: SQLMetadataStore(f"sqlite:///{db}")):
        with pytest.raises(ConfigurationError, match="another application's") as caught:
            attempt()
        assert "newer TwinGraph" not in str(caught.value)
