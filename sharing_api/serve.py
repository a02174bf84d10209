"""Runs the API under uvicorn with our access log (uvicorn's would print query strings)."""

from __future__ import annotations

import uvicorn

from lakehouse.settings import Settings
from sharing_api.main import create_app
from sharing_api.settings import ApiSettings


def serve(platform: Settings, api: ApiSettings) -> None:
    app = create_app(platform, api)
    config = uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        access_log=False,
        log_config=None,  # keep the process's logging set-up
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()
