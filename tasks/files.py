"""Durable files: written and synced before anything says they exist, hashed without copies."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any


def sha256_of(path: Path) -> str:
    """Hashed memory-mapped, in one call without the GIL: no buffer copies, a sixth faster than
    reading it in chunks (bench/backups.py). A file that cannot be mapped is read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        try:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                digest.update(mapped)
                return digest.hexdigest()
        except (OSError, ValueError):  # an empty file, or a filesystem without mmap
            pass
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
