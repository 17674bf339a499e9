"""Fixtures for the tests of jobapp's release history: the origin, checkouts, databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from sample_app.history import build_origin

from .checkouts import Checkout, Database, MakeCheckout, Origin, git


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Origin:
    path = tmp_path_factory.mktemp("origin") / "jobapp.git"
    return Origin(path=path, refs=build_origin(path))


@pytest.fixture
def make_checkout(origin: Origin, tmp_path: Path) -> MakeCheckout:
    """``make_checkout(ref, database_url)``: a fresh clone of the origin at ``ref``."""
    created = 0

    def make(ref: str, database_url: str) -> Checkout:
        nonlocal created
        created += 1
        app_dir = tmp_path / f"app{created}"
        git("clone", "--quiet", str(origin.path), str(app_dir), cwd=tmp_path)
        checkout = Checkout(app_dir, database_url, tmp_path / f"data{created}")
        checkout.switch(ref)
        return checkout

    return make


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """One scratch database for the session; each test empties it first."""
    name = f"jobapp_releases_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobapp.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.engine.dispose()
