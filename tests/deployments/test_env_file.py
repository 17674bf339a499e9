"""An env file's edges as python-dotenv reads it: what is not KEY=VALUE, and a file that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.errors import ConfigError
from deployments.secrets import read_env_file


@pytest.mark.parametrize(("text", "line"), [("NOEQUALS\n", 1), ("A=1\n# a key alone:\nexport B  # no value\n", 3),
                                            ("A=1\nA\n", 2), ("'QUOTED'\n", 1)],
                         ids=["a bare key", "an exported key with a comment", "a key given again bare",
                              "a quoted key"])
def test_a_key_without_a_value_names_its_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "app.env"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_env_file(path)
    assert str(caught.value) == f"env file {path}: line {line} has no '='. write KEY=VALUE on each line"


def test_every_value_is_text(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=\nB=''\nC=3\n")
    assert read_env_file(path) == {"A": "", "B": "", "C": "3"}


@pytest.mark.parametrize("directory", [False, True], ids=["missing", "a directory"])
def test_a_file_that_cannot_be_read_raises_oserror_not_an_empty_dict(tmp_path: Path, directory: bool) -> None:
    path = tmp_path / "app.env"
    if directory:
        path.mkdir()
    with pytest.raises(OSError):
        read_env_file(path)


@pytest.mark.parametrize(("text", "line"), [("A=1\nK V\n", 2), ("A=\"unclosed\n", 1), ("=value\n", 1)],
                         ids=["words without '='", "an unclosed quote", "a value without a key"])
def test_a_line_dotenv_cannot_parse_is_an_error_not_a_skipped_line(tmp_path: Path, text: str, line: int) -> None:
    """dotenv itself only warns and skips such a line: a variable the app needs would then go missing."""
    path = tmp_path / "app.env"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_env_file(path)
    assert str(caught.value) == f"env file {path}: line {line} cannot be read as KEY=VALUE. write KEY=VALUE on each line"
