"""Minimal Alembic projects for tests: real scripts, real migrations, nothing of jobapp."""

from __future__ import annotations

import textwrap
from pathlib import Path


def env_py(variable: str) -> str:
    """An env.py that migrates the database whose URL is in `variable`, one transaction per revision;
    in offline mode (`--sql`) it writes the SQL for that URL's dialect, as Alembic's template does."""
    return f"""\
import os

from alembic import context
from sqlalchemy import create_engine, pool

if context.is_offline_mode():
    context.configure(url=os.environ["{variable}"], target_metadata=None, literal_binds=True,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(os.environ["{variable}"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
"""


def alembic_project(root: Path, revisions: dict[str, tuple[str | None, str, str]], env: str) -> Path:
    """An Alembic project at `root`: revision -> (down_revision, upgrade body, downgrade function source);
    `env` is its env.py."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (root / "migrations" / "env.py").write_text(env)
    for revision, (down, body, downgrade_source) in revisions.items():
        (versions / f"{revision}_step.py").write_text(
            f'"""Step {revision}."""\n\nfrom alembic import op\n\nrevision = {revision!r}\n'
            f"down_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
            f"def upgrade():\n    {body}\n\n\n{textwrap.dedent(downgrade_source)}\n")
    return root
