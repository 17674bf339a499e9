"""What the deploy's form and `prefect deployment run --param` accept."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from flows.production_deployment import production_deployment


def test_an_all_digit_short_sha_typed_on_the_command_line_is_accepted() -> None:
    """`--param ref=1234567` arrives as the number 1234567 (the CLI reads values as JSON); the schema the
    deployment enforces must not refuse it as "not a string"; the flow reads it as the text it was."""
    schema = parameter_schema(production_deployment.fn).model_dump_for_openapi()
    validate({"environment": "production", "ref": 1234567}, schema, raise_on_error=True)
    validate({"environment": "production", "ref": "v2"}, schema, raise_on_error=True)
