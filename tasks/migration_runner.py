"""Runs inside the *app's* interpreter, never imported by the orchestrator.

    python migration_runner.py status  --config alembic.ini --current REV
    python migration_runner.py upgrade --config alembic.ini --to REV
    python migration_runner.py downgrade --config alembic.ini --to REV
    python migration_runner.py rehearse --config alembic.ini --to REV --back REV   (up, down, up again)

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
    parser.add_argument("command", choices=["status", "upgrade", "downgrade", "rehearse"])
    parser.add_argument("--config", default="alembic.ini")
    parser.add_argument("--current", default="")
    parser.add_argument("--to", default="heads")
    parser.add_argument("--back", default="base", help="rehearse: the revision the downgrade returns to")
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
                        "has_downgrade": _has_downgrade(rev), "expand_only": _expand_only(rev)}
                       for rev in script.walk_revisions() if rev.revision not in done]
        pending.reverse()
        _emit({"heads": heads, "current": current, "known": known, "pending": pending})
        return 0
    started = time.perf_counter()
    if args.command == "upgrade":
        command.upgrade(config, args.to)
    elif args.command == "downgrade":
        command.downgrade(config, args.to)
    else:  # one interpreter for the three steps: the app's imports are paid once, not three times
        for name, run, target in (("upgrade", command.upgrade, args.to), ("downgrade", command.downgrade, args.back),
                                  ("upgrade", command.upgrade, args.to)):
            print(f"migration-runner: {name}", file=sys.stderr, flush=True)  # names the step that fails
            run(config, target)
    _emit({"heads": heads, "seconds": round(time.perf_counter() - started, 3)})
    return 0


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


# What only adds to a schema: code written for the schema before keeps working on the one after.
EXPANDING = {"create_table", "add_column", "create_index", "bulk_insert"}


def _expand_only(rev: object) -> bool:
    """True when upgrade() only adds (tables, indexes, columns the old code need not write), each as a
    plain `op.<operation>(...)` statement, batches included; anything else, or anything this reading
    cannot follow (raw SQL, a connection, a helper, a branch), counts as not."""
    tree = _parsed(rev)
    upgrade = next((node for node in (tree.body if tree else []) if isinstance(node, ast.FunctionDef)
                    and node.name == "upgrade"), None)
    operations = _operations(upgrade.body, {"op"}) if upgrade is not None else None
    return bool(operations) and all(name in EXPANDING and (name != "add_column" or _old_code_need_not_write(call))
                                    for name, call in operations)


def _operations(body: list[ast.stmt], ops: set[str]) -> list[tuple[str, ast.Call]] | None:
    """The `op.<name>(...)` statements of `body`, or None when it holds anything else."""
    found: list[tuple[str, ast.Call]] = []
    for stmt in body:
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue
        if isinstance(stmt, ast.With) and all(_op_call(item.context_expr, ops) == "batch_alter_table"
                                              for item in stmt.items):
            aliases = {item.optional_vars.id for item in stmt.items if isinstance(item.optional_vars, ast.Name)}
            inner = _operations(stmt.body, ops | aliases)
            if inner is None:
                return None
            found += inner
            continue
        name = _op_call(stmt.value, ops) if isinstance(stmt, ast.Expr) else None
        if name is None:
            return None
        found.append((name, stmt.value))  # type: ignore[arg-type, union-attr]
    return found


def _op_call(node: ast.expr, ops: set[str]) -> str | None:
    func = node.func if isinstance(node, ast.Call) else None
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ops:
        return func.attr
    return None


def _old_code_need_not_write(call: ast.Call) -> bool:
    """An added column the old code's INSERTs may leave out: nullable, or with a server default."""
    columns = [arg for arg in call.args if isinstance(arg, ast.Call)]
    for column in columns:
        keywords = {k.arg: k.value for k in column.keywords}
        nullable = keywords.get("nullable")
        if (isinstance(nullable, ast.Constant) and nullable.value is False) and "server_default" not in keywords:
            return False
    return True


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
