"""HTTP clients for the checks: one TLS context for the whole process.

Building an httpx client loads the CA bundle into a new TLS context, about 50 ms of CPU each time.
Health probes, metrics scrapes and smoke checks build a client per request on purpose (no pooled
connection may hide a server that stopped accepting new ones), so they share the context instead.
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import certifi
import httpx


@cache
def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def client(**kwargs: Any) -> httpx.Client:
    """An httpx.Client that never follows redirects unless asked, on the shared TLS context."""
    kwargs.setdefault("follow_redirects", False)
    return httpx.Client(verify=tls_context(), **kwargs)
