"""``migrate.HEAD`` (what opening a store checks a database against, without Alembic) is the
head of the migration scripts as Alembic reads them; a new migration must move it."""
from twingraph.stores.metadata import migrate


def test_head_is_the_head_of_the_migration_scripts() -> None:
    assert migrate.head() == migrate.HEAD == migrate.scripts_head()
