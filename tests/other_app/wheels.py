"""greetlib, the app's one dependency that the host does not share: a wheel of each version, in a
directory pip installs from with `--no-index --find-links DIR`, so the tests need no network."""

from __future__ import annotations

from pathlib import Path

from tests.wheels import build_wheel

VERSIONS = ("1.0", "2.0")


def greetlib_source(version: str) -> str:
    return (f'"""Greetings, version {version}."""\n\n__version__ = "{version}"\n\n\n'
            f'def greet(name: str) -> str:\n    return f"Hello, {{name}} (greetlib {version})"\n')


def wheelhouse(directory: Path) -> Path:
    """`directory` with every greetlib version's wheel."""
    for version in VERSIONS:
        build_wheel(directory, "greetlib", version, {"greetlib/__init__.py": greetlib_source(version)})
    return directory
