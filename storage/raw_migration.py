"""Piccolo migrations written as raw SQL: the schema needs what Piccolo's table classes
cannot express (composite primary keys, partial and functional indexes)."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager


async def run_sql(sql: str) -> None:
    """Runs several statements at once, inside the migration's own transaction so that the
    schema and Piccolo's record of the migration commit together."""
    from storage.piccolo_conf import DB

    transaction = DB.current_transaction.get()
    if transaction is not None:
        await transaction.connection.execute(sql)
        return
    connection = await DB.get_new_connection()
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def sql_migration(
    migration_id: str, description: str, forwards_sql: str, backwards_sql: str
) -> MigrationManager:
    manager = MigrationManager(migration_id=migration_id, app_name="chirp", description=description)

    async def forwards() -> None:
        await run_sql(forwards_sql)

    async def backwards() -> None:
        await run_sql(backwards_sql)

    manager.add_raw(forwards)
    manager.add_raw_backwards(backwards)
    return manager
