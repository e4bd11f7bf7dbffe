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
