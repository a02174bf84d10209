"""Builds the FastAPI application: services, middleware, error handlers and routers; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware

from lakehouse.settings import Settings
from sharing_api import handlers
from sharing_api.middleware import AuditMiddleware
from sharing_api.responses import json_response
from sharing_api.routes import admin, audit, auth, datasets, patients, sharing, ui
from sharing_api.routes.ui import origin
from sharing_api.services import Services, build_services
from sharing_api.settings import ApiSettings

DESCRIPTION = """
Who may see which patient's history and which federated dataset — decided by grant, consent and
purpose, enforced on rows and columns, and audited.

Authenticate with `Authorization: Bearer <token>`: a credential from
`medshare hospitals issue-token`, or an access token from `POST /oauth/token`
(client credentials). Every error is `{errorCode, message}`.
"""


def public_health(services: Services) -> dict[str, object]:
    lake = services.lake
    problems = len(lake.current.missing) + len(lake.current.stale)
    problems += bool(services.grants.last_error) + bool(services.shares.sync.last_error)
    return {
        "ready": lake.loaded.is_set(),
        "generation": lake.current.number,
        "keeperRunning": services.keeper_status() is not None,
        "sharedCopiesSynced": services.shares.sync.passes,
        "problems": problems,
    }


def app_from_environment() -> FastAPI:
    """The app as each uvicorn worker process builds it (settings from the environment)."""
    import logging
    import sys

    from lakehouse.settings import get_settings
    from sharing_api.serve import die_with_supervisor
    from sharing_api.settings import load_api_settings

    die_with_supervisor()

    # A worker starts as a fresh interpreter: the parent's logging set-up is not inherited.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return create_app(get_settings(), load_api_settings())


def create_app(platform: Settings, api: ApiSettings, *, services: Services | None = None) -> FastAPI:
    services = services or build_services(platform, api)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(title="medshare sharing API", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.services = services
    app.add_middleware(AuditMiddleware, journal=services.journal)
    # The clinician page served by another provincial site calls this one when its own fails.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[origin(u) for u in api.site_urls(platform)],
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Accept", "X-Resident-Id"],
        expose_headers=["X-Request-ID", "Retry-After"],
    )
    handlers.install(app)
    for module in (auth, patients, datasets, sharing, audit, admin, ui):
        app.include_router(module.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        """For load balancers and start-up waits: nothing that names a table, path or error (the
        details are for operators, at /v1/admin/health)."""
        return json_response(public_health(services))

    return app
