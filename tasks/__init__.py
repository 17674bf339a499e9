"""Prefect tasks, one module per resource; `tasks.steps` holds the decorators that make a function a
runbook step, and the recording of every step into the ledger."""
