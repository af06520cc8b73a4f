"""Alembic environment for the collectors schema; run through services.collectors.observations.migrate().

The connection comes from Config.attributes (opened and locked by migrate()), so this file never
reads URLs or ini files itself.
"""

from alembic import context

from services.collectors.observations import SCHEMA, VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    version_table_schema=SCHEMA,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
