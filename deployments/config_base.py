"""What every part of an environment file is made of: its models, and paths relative to the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


def _relative_to_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    # normpath, not resolve(): a venv's python is a symlink that must stay one.
    if base is not None and not value.is_absolute():
        return Path(os.path.normpath(Path(base) / value))
    return value


FilePath = Annotated[Path, AfterValidator(_relative_to_file)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
