from alembic import context
from sqlalchemy import create_engine, pool

from app.core.config import settings
from app.models import metadata


def run_migrations_offline() -> None:
    context.configure(url=settings.SQLALCHEMY_DATABASE_URI.render_as_string(hide_password=False),
                      target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(settings.SQLALCHEMY_DATABASE_URI, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
