"""metric samples by (step, ts): downsampling, retention and /metrics read by time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 15:10:00
"""
from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('metric_samples', schema=None) as batch_op:
        batch_op.create_index('ix_metric_samples_step_ts', ['step', 'ts'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('metric_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_samples_step_ts')
