"""Inventory: a small app of another shape than jobapp, for the end-to-end story of
tests/e2e/test_other_app.py.

A monorepo whose backend (`backend/`, beside `frontend/`) is a FastAPI app on PostgreSQL: settings
from five variables (POSTGRES_SERVER, _PORT, _USER, _PASSWORD, _DB), Alembic scripts in
`app/alembic`, no /metrics, a health route that answers `true` and carries no version, an items API,
and a runtime route that says which greetlib (its one dependency the host does not share) serves,
from which environment. Two releases: r1 (the items table, greetlib 1.0) and r2 (a reversible
migration adding items.priority, code that uses it, greetlib 2.0).

    releases/       the app's source: r1 whole, r2 what it changes
    repository.py   the bare origin with both releases tagged on main
    wheels.py       greetlib's wheels, for installs without an index
    database.py     the app's role (with a password) and a database per environment
    environments.py deployctl init, the files filled in, an environment brought up at r1
"""
