"""Runs inside the *app's* interpreter, never imported by the orchestrator.

    python migration_runner.py status  --config alembic.ini --current REV
    python migration_runner.py upgrade --config alembic.ini --to REV
    python migration_runner.py downgrade --config alembic.ini --to REV
    python migration_runner.py rehearse --config alembic.ini --to REV --back REV --revisions R1,R2
                                          (up one revision at a time, timed; down; up again)
    python migration_runner.py render --config alembic.ini --revisions R1,R2   (each one's SQL, offline)

It depends only on the standard library and alembic (which an Alembic app has), and prints one JSON
object on its last line of stdout. Upgrades and downgrades go through the app's own `env.py`, so the
app's models and settings load with the app's own packages and variables.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["status", "upgrade", "downgrade", "rehearse", "render"])
    parser.add_argument("--config", default="alembic.ini")
    parser.add_argument("--current", default="")
    parser.add_argument("--to", default="heads")
    parser.add_argument("--back", default="base", help="rehearse: the revision the downgrade returns to")
    parser.add_argument("--render", action="store_true", help="status: with each pending revision's SQL (see render)")
    parser.add_argument("--once", action="store_true", help="rehearse: only the upgrade (no downgrade to go back by)")
    parser.add_argument("--revisions", default="", help="rehearse, render: the pending revisions, oldest first")
    args = parser.parse_args()

    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = Config(args.config)
    script = ScriptDirectory.from_config(config)
    heads = list(script.get_heads())
    if args.command == "status":
        current = args.current or None
        pending = []
        known = True
        if current is not None:
            try:
                known = script.get_revision(current) is not None
            except CommandError:  # alembic raises, rather than answer None, for a revision it lacks
                known = False
        if known:
            # Every revision of the tree that the current one does not descend from, oldest first; with
            # two heads the database may sit on one branch while the other is pending.
            done = _ancestry(script, current) if current else set()
            pending = [{"revision": rev.revision, "message": (rev.doc or "").strip(),
                        "has_downgrade": _has_downgrade(rev)}
                       for rev in script.walk_revisions() if rev.revision not in done]
        pending.reverse()
        rendered = _render(args.config, script, [p["revision"] for p in pending]) if args.render else {}
        _emit({"heads": heads, "current": current, "known": known, "pending": pending, **rendered})
        return 0
    revisions = [r for r in args.revisions.split(",") if r]
    if args.command == "render":
        _emit({"heads": heads, **_render(args.config, script, revisions)})
        return 0
    started = time.perf_counter()
    windows = []
    if args.command == "upgrade":
        command.upgrade(config, args.to)
    elif args.command == "downgrade":
        command.downgrade(config, args.to)
    else:  # one interpreter for the three steps: the app's imports are paid once, not three times
        print("migration-runner: upgrade", file=sys.stderr, flush=True)  # names the step that fails
        # One revision at a time, each in its own transaction, so what each one locks and how long it
        # takes is measured apart (the caller samples the database's locks in these windows).
        for revision in revisions or [args.to]:
            began = time.time()
            command.upgrade(config, revision)
            windows.append({"revision": revision, "started": began, "ended": time.time()})
        command.upgrade(config, args.to)
        if windows:  # what follows may write the same tables: the first upgrade's measuring ends here,
            time.sleep(0.1)  # once the caller's sampler has had time to see the last revision's commit
            windows[-1]["until"] = time.time()
        for name, run, target in () if args.once else (("downgrade", command.downgrade, args.back),
                                                       ("upgrade", command.upgrade, args.to)):
            print(f"migration-runner: {name}", file=sys.stderr, flush=True)
            run(config, target)
    _emit({"heads": heads, "seconds": round(time.perf_counter() - started, 3), "windows": windows})
    return 0


def _render(config_file: str, script: object, revisions: list[str]) -> dict[str, object]:
    """Each revision's upgrade as the SQL alembic's offline mode writes for it (the app's env.py decides
    the dialect from the database it is pointed at; nothing connects). A revision whose upgrade needs a
    connection (it reads the database, `op.get_bind()`) cannot be written out: its error says so."""
    import io

    from alembic import command
    from alembic.config import Config

    sql: dict[str, str] = {}
    errors: dict[str, str] = {}
    for revision in revisions:
        down = script.get_revision(revision).down_revision  # type: ignore[attr-defined]
        start = down[0] if isinstance(down, tuple) else down
        buffer = io.StringIO()
        config = Config(config_file, output_buffer=buffer)
        try:
            command.upgrade(config, f"{start}:{revision}" if start else revision, sql=True)
        except Exception as exc:  # noqa: BLE001 - any failure of the app's script is the answer
            errors[revision] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            continue
        sql[revision] = buffer.getvalue()
    return {"sql": sql, "errors": errors}


def _ancestry(script: object, revision: str) -> set[str]:
    """`revision` and every revision it descends from (through merges too)."""
    seen: set[str] = set()
    todo = [revision]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        down = script.get_revision(name).down_revision  # type: ignore[attr-defined]
        todo += [d for d in (down if isinstance(down, tuple) else (down,)) if d]
    return seen


def _has_downgrade(rev: object) -> bool:
    """False when downgrade() is missing, empty (pass, ..., a docstring, a bare return) or only raises."""
    tree = _parsed(rev)
    for node in (tree.body if tree else []):
        if isinstance(node, ast.FunctionDef) and node.name == "downgrade":
            body = [stmt for stmt in node.body
                    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
            return bool(body) and not all(isinstance(stmt, (ast.Pass, ast.Raise))
                                          or (isinstance(stmt, ast.Return) and stmt.value is None) for stmt in body)
    return False


def _parsed(rev: object) -> ast.Module | None:
    path = getattr(rev, "path", None)
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        return ast.parse(handle.read())


def _emit(payload: dict[str, object]) -> None:
    sys.stdout.write("\n" + json.dumps(payload) + "\n")


if __name__ == "__main__":
    sys.exit(main())
