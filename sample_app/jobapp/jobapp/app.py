"""Builds the jobapp ASGI application.

``create_app(settings)`` is the factory; ``jobapp.app:app`` is what gunicorn serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from jobapp import routes
from jobapp.activity import ActivityMiddleware
from jobapp.maintenance import MaintenanceMiddleware
from jobapp.metrics import MetricsMiddleware
from jobapp.runtime import build_runtime
from jobapp.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = build_runtime(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runtime.engine.dispose()

    app = FastAPI(title="jobapp", version=runtime.version, lifespan=lifespan)
    app.state.runtime = runtime
    app.include_router(routes.router)
    # Starlette wraps in reverse order: metrics see every answer, including maintenance 503s,
    # and requests refused for maintenance do not count as user activity.
    app.add_middleware(ActivityMiddleware, recorder=runtime.activity)
    app.add_middleware(MaintenanceMiddleware, flag=runtime.settings.maintenance_file)
    # The router's own routes, not the app's: FastAPI wraps included routers in objects
    # that do not expose a path template.
    app.add_middleware(MetricsMiddleware, routes=[*routes.router.routes, *app.router.routes])
    return app


_served: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    # gunicorn asks for ``jobapp.app:app``; building it on first access, not at import, lets
    # tests and tools import this module without an environment.
    global _served
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _served is None:
        _served = create_app()
    return _served
