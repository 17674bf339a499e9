"""The critical paths' requests are templates, and their answers are checked against expectations.

    "{{ login.access_token }}"            a value from the JSON answer of the earlier check `login`,
                                          keeping its type when it is the whole string (an id stays a number)
    "Bearer {{ login.access_token }}"     ... or put into text
    "{{ job-scraping.job_ids.0 }}"        keys and list indices, joined by dots
    "{{ secrets.password }}"              a value of the check's `secrets` (resolved when the check runs)

Expectations look a value up the same way (`at = "items.0.title"`) and hold it to `equals`,
`contains` (a substring, a list element, an object key) or `matches` (a regular expression).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from deployments.config import Expectation

REFERENCE = re.compile(r"\{\{\s*([a-z0-9][a-z0-9-]*)\.([^\s{}]+)\s*\}\}")
SECRETS = "secrets"


def at(value: Any, path: str) -> Any:
    """The part of `value` at `path` (dot-separated keys and list indices); LookupError names what is missing."""
    current = value
    for part in (path.split(".") if path else []):
        if isinstance(current, list) and part.lstrip("-").isdigit() and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, dict) and part in current:
            current = current[part]
        else:
            raise LookupError(f"no {part!r} in {_shown(current)}")
    return current


def fill(value: Any, answers: Mapping[str, Any], secrets: Mapping[str, str]) -> Any:
    """`value` with every reference replaced; LookupError when one has no value."""
    if isinstance(value, dict):
        return {key: fill(item, answers, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, answers, secrets) for item in value]
    if not isinstance(value, str) or "{{" not in value:
        return value
    whole = REFERENCE.fullmatch(value.strip())
    if whole:
        return _value(whole, answers, secrets)
    return REFERENCE.sub(lambda match: _text(_value(match, answers, secrets)), value)


def _value(match: re.Match[str], answers: Mapping[str, Any], secrets: Mapping[str, str]) -> Any:
    name, path = match[1], match[2]
    if name == SECRETS:
        if path not in secrets:
            raise LookupError(f"{{{{ secrets.{path} }}}} is not among the check's secrets ({', '.join(secrets) or 'none'})")
        return secrets[path]
    if name not in answers:
        raise LookupError(f"{match[0]} has no value: no earlier check {name!r} answered")
    try:
        return at(answers[name], path)
    except LookupError as exc:
        raise LookupError(f"{match[0]} has no value: {exc}") from None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def unmet(expectation: Expectation, answer: Any) -> str | None:
    """Why the answer does not meet the expectation, or None when it does."""
    where = expectation.at or "the answer"
    try:
        value = at(answer, expectation.at)
    except LookupError as exc:
        return f"{where}: {exc}"
    if "equals" in expectation.model_fields_set:
        return None if value == expectation.equals else f"{where} is {_shown(value)}, expected {_shown(expectation.equals)}"
    if "contains" in expectation.model_fields_set:
        wanted = expectation.contains
        if isinstance(value, str):
            held = isinstance(wanted, str) and wanted in value
        elif isinstance(value, (list, dict)):
            held = wanted in value
        else:
            held = False
        return None if held else f"{where} ({_shown(value)}) does not contain {_shown(wanted)}"
    assert expectation.matches is not None
    text = value if isinstance(value, str) else _text(value)
    return None if re.search(expectation.matches, text) else f"{where} ({_shown(value)}) does not match {expectation.matches!r}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
