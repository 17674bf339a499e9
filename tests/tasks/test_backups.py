"""Backups on real SQLite and PostgreSQL: verified, restorable, never half-written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from deployments.errors import BackupFailed
from tasks.backups import TAG_FORMAT, new_tag, prune, restore_backup, take_backup


def make_schema(url: str, rows: int = 50) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0002')"))
        conn.execute(text("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title VARCHAR(80))"))
        for i in range(rows):
            conn.execute(text("INSERT INTO jobs (id, title) VALUES (:i, :t)"), {"i": i, "t": f"job {i}"})
    engine.dispose()


def damage(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id < 10"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
        conn.execute(text("CREATE TABLE half_migrated (id INTEGER)"))
    engine.dispose()


def table_names(url: str) -> list[str]:
    from sqlalchemy import inspect
    engine = create_engine(url)
    with engine.connect() as conn:
        names = sorted(inspect(conn).get_table_names())
    engine.dispose()
    return names


@pytest.fixture
def database(empty_database: str) -> str:
    make_schema(empty_database)
    return empty_database


def test_backup_is_verified_and_restores_exactly(database: str, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    tag = new_tag()
    manifest = take_backup(database, backups, tag, revision="0002", git_sha="a" * 40, run_id="run-1")
    assert (backups / tag / manifest.file).exists() and not list(backups.glob("*.partial"))
    stored = json.loads((backups / tag / "manifest.json").read_text())
    assert stored["row_counts"] == {"alembic_version": 1, "jobs": 50}
    assert stored["revision"] == "0002" and stored["git_sha"] == "a" * 40
    assert len(stored["sha256"]) == 64 and stored["size_bytes"] > 0
    damage(database)
    restore_backup(database, backups, tag)
    assert table_names(database) == ["alembic_version", "jobs"]
    engine = create_engine(database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 50
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0002"
    engine.dispose()


def test_tag_format() -> None:
    from datetime import datetime, timezone
    assert new_tag(datetime(2026, 11, 26, 5, 4, 3, tzinfo=timezone.utc)) == "pre-deployment-20261126-050403"
    assert TAG_FORMAT.startswith("pre-deployment-")


def test_revision_mismatch_is_not_a_backup(database: str, tmp_path: Path) -> None:
    with pytest.raises(BackupFailed) as caught:
        take_backup(database, tmp_path / "b", new_tag(), revision="0001", git_sha=None, run_id=None)
    assert "0002" in str(caught.value)
    assert list((tmp_path / "b").iterdir()) == []


def test_a_failing_dump_tool_leaves_nothing(tmp_path: Path, postgres_database: str) -> None:
    make_schema(postgres_database)
    broken = tmp_path / "pg_dump"
    broken.write_text("#!/bin/sh\necho 'pg_dump: error: could not write to output file: No space left on device' >&2\n"
                      "exit 1\n")
    broken.chmod(0o755)
    with pytest.raises(BackupFailed) as caught:
        take_backup(postgres_database, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None,
                    pg_dump=str(broken))
    assert "No space left on device" in str(caught.value) and "nothing was migrated" in str(caught.value)
    assert list((tmp_path / "b").iterdir()) == []


def test_disk_full_leaves_no_partial_file(tmp_path: Path) -> None:
    # A real ENOSPC: a 1 MiB tmpfs is not available unprivileged everywhere, so fill RLIMIT_FSIZE instead.
    import resource
    url = f"sqlite:///{tmp_path / 'app.db'}"
    make_schema(url, rows=20000)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    import signal
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(BackupFailed) as caught:
            take_backup(url, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert "could not be written" in str(caught.value)
    assert list((tmp_path / "b").iterdir()) == []


def test_tampered_backup_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    make_schema(url)
    manifest = take_backup(url, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None)
    with open(tmp_path / "b" / manifest.tag / manifest.file, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(BackupFailed, match="sha256 does not match"):
        restore_backup(url, tmp_path / "b", manifest.tag)


@pytest.mark.parametrize("check", ["quick", "integrity"])
def test_a_damaged_copy_is_never_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str) -> None:
    """The copy is checked itself: a page the disk mangled while it was written fails the check."""
    import tasks.sqlite_backups

    url = f"sqlite:///{tmp_path / 'app.db'}"
    make_schema(url, rows=2000)
    copy = tasks.sqlite_backups._copy

    def copy_then_damage(parsed, target, expected_revision):  # type: ignore[no-untyped-def]
        state = copy(parsed, target, expected_revision)
        with sqlite3.connect(target) as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
        with open(target, "r+b") as handle:  # the b-tree page type byte of the table's root page
            handle.seek((root - 1) * page_size)
            handle.write(b"\xff")
        return state

    monkeypatch.setattr(tasks.sqlite_backups, "_copy", copy_then_damage)
    pragma = f"{check}_check"
    with pytest.raises(BackupFailed, match=f"verify backup: {pragma} of the copy says"):
        take_backup(url, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None, sqlite_check=check)
    assert not list((tmp_path / "b").iterdir()), "nothing is left of a copy that failed its check"


def test_the_manifest_says_which_check_the_copy_passed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    make_schema(url)
    quick = take_backup(url, tmp_path / "b", "pre-deployment-20260101-000000", revision="0002", git_sha=None,
                        run_id=None)
    full = take_backup(url, tmp_path / "b", "pre-deployment-20260101-000001", revision="0002", git_sha=None,
                       run_id=None, sqlite_check="integrity")
    assert (quick.verified_by, full.verified_by) == ("quick_check", "integrity_check")
    assert quick.describe().endswith("verified by quick_check")


def test_password_never_reaches_manifest_or_argv(tmp_path: Path, postgres_admin_url: str) -> None:
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS deploy_secret_test WITH (FORCE)"))
        conn.execute(text("DROP ROLE IF EXISTS deploy_secret_role"))
        conn.execute(text("CREATE ROLE deploy_secret_role LOGIN CREATEDB PASSWORD 'Xq-9-very-secret'"))
        conn.execute(text("CREATE DATABASE deploy_secret_test OWNER deploy_secret_role"))
    url = "postgresql+psycopg://deploy_secret_role:Xq-9-very-secret@127.0.0.1:5432/deploy_secret_test"
    # A pg_dump wrapper that records its argv and environment, then runs the real one.
    spy = tmp_path / "pg_dump"
    seen = tmp_path / "seen.txt"
    spy.write_text(f"#!/bin/sh\necho \"$@\" >> {seen}\nenv >> {seen}\nexec pg_dump \"$@\"\n")
    spy.chmod(0o755)
    try:
        make_schema(url)
        manifest = take_backup(url, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None,
                               pg_dump=str(spy))
        assert manifest.row_counts["jobs"] == 50
        recorded = seen.read_text() + (tmp_path / "b" / manifest.tag / "manifest.json").read_text()
        assert "Xq-9-very-secret" not in recorded
        assert "deploy_secret_role:***@" in manifest.source
    finally:
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS deploy_secret_test WITH (FORCE)"))
            conn.execute(text("DROP ROLE IF EXISTS deploy_secret_role"))
        admin.dispose()


def test_prune_keeps_protected(tmp_path: Path) -> None:
    for second in range(6):
        (tmp_path / f"pre-deployment-20260101-00000{second}").mkdir()
    (tmp_path / "pre-deployment-20260101-000009.partial").mkdir()
    removed = prune(tmp_path, keep=2, protected={"pre-deployment-20260101-000000"})
    assert removed == [f"pre-deployment-20260101-00000{s}" for s in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir())[:1] == ["pre-deployment-20260101-000000"]


def test_a_restore_is_checked_against_the_schema_the_backup_recorded(database: str, tmp_path: Path) -> None:
    """The restored database must hold the revision, row counts and schema fingerprint the manifest
    recorded when the backup was proven; one that differs (here: a manifest from another schema) fails."""
    manifest = take_backup(database, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None)
    assert len(manifest.fingerprint) == 64
    path = tmp_path / "b" / manifest.tag / "manifest.json"
    recorded = json.loads(path.read_text())
    path.write_text(json.dumps({**recorded, "fingerprint": "0" * 64}))
    with pytest.raises(BackupFailed) as caught:
        restore_backup(database, tmp_path / "b", manifest.tag)
    assert f"schema fingerprint {manifest.fingerprint[:12]}, expected 000000000000" in str(caught.value)
    path.write_text(json.dumps(recorded))
    assert restore_backup(database, tmp_path / "b", manifest.tag).fingerprint == manifest.fingerprint
