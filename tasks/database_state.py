"""What a database holds, in three figures that say whether two databases agree: the alembic revision,
a fingerprint of the schema, and each table's row count.

A PostgreSQL backup is proven by restoring it and comparing these with the database it was taken
from, and a restore by comparing them with what its manifest recorded. Read through SQLAlchemy's
inspector, inside the caller's transaction, so all three describe one snapshot. (SQLite copies are
compared by `tasks.sqlite_backups.sqlite_state`, from SQLite's own catalogue.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class DatabaseState:
    revision: str | None
    fingerprint: str
    row_counts: dict[str, int] = field(default_factory=dict)

    def differences(self, other: DatabaseState) -> list[str]:
        """What differs, in words (empty when they agree)."""
        found = []
        if self.revision != other.revision:
            found.append(f"revision {other.revision}, expected {self.revision}")
        if self.fingerprint != other.fingerprint:
            found.append(f"schema fingerprint {other.fingerprint[:12]}, expected {self.fingerprint[:12]}")
        if self.row_counts != other.row_counts:
            tables = sorted(set(self.row_counts) | set(other.row_counts))
            changed = [f"{t} {other.row_counts.get(t, 'missing')} (expected {self.row_counts.get(t, 'none')})"
                       for t in tables if self.row_counts.get(t) != other.row_counts.get(t)]
            found.append("rows: " + ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""))
        return found


def read_state(conn: Connection, counts: bool = True) -> DatabaseState:
    """All three figures; `counts=False` leaves the row counts out (a schema restored without its rows)."""
    tables = sorted(inspect(conn).get_table_names())
    row_counts = {t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()) for t in tables} if counts else {}
    revision = None
    if "alembic_version" in tables:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return DatabaseState(revision, schema_fingerprint(conn), row_counts)


def schema_fingerprint(conn: Connection) -> str:
    """sha256 of every table's columns (name, type, nullability, default), indexes, unique, foreign key
    and check constraints and primary key: what a migration changes, in a form both databases share."""
    inspector = inspect(conn)
    shape: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        shape[table] = {
            "columns": sorted((c["name"], str(c["type"]), bool(c["nullable"]), str(c.get("default")))
                              for c in inspector.get_columns(table)),
            "primary_key": inspector.get_pk_constraint(table).get("constrained_columns") or [],
            "indexes": sorted((i["name"] or "", tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "unique": sorted((u["name"] or "", tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                                   for f in inspector.get_foreign_keys(table)),
            "checks": sorted(str(c.get("sqltext")) for c in _check_constraints(inspector, table)),
        }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def _check_constraints(inspector: Any, table: str) -> list[dict[str, Any]]:
    try:
        return list(inspector.get_check_constraints(table))
    except NotImplementedError:
        return []
