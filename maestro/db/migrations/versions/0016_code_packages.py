"""code packages: the step code `maestro deploy` ships, and the package each version runs

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "code_packages",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_code_packages")),
    )
    op.add_column("workflow_versions", sa.Column("code_sha256", sa.String(length=64)))
    op.add_column("workflow_versions", sa.Column("code_uri", sa.Text()))
    op.create_foreign_key(
        op.f("fk_workflow_versions_code_sha256_code_packages"),
        "workflow_versions",
        "code_packages",
        ["code_sha256"],
        ["sha256"],
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_workflow_versions_code_sha256_code_packages"), "workflow_versions")
    op.drop_column("workflow_versions", "code_uri")
    op.drop_column("workflow_versions", "code_sha256")
    op.drop_table("code_packages")
