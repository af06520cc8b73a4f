"""Teams: each investigation and workflow belongs to the team of the API key that made it.

`team` is the gateway's `Access.team` of the creating request; '' = no team (an admin key or
another service), which only callers without a team see. Rows made before this revision get ''.
The index serves a team's listing (newest first, by status or not) and the count of its queued and
running investigations that bounds how many one team runs at once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-15
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("investigations", "workflows"):
        op.execute(f"alter table swarm.{table} add column team text not null default ''")
        op.execute(f"create index {table}_by_team on swarm.{table} (team, status, created_at desc, id desc)")


def downgrade() -> None:
    for table in ("investigations", "workflows"):
        op.execute(f"drop index swarm.{table}_by_team")
        op.execute(f"alter table swarm.{table} drop column team")
