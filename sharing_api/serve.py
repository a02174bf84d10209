"""Runs the API under uvicorn with our access log (uvicorn's would print query strings)."""

from __future__ import annotations

import uvicorn

from lakehouse.settings import Settings
from sharing_api.main import create_app
from sharing_api.settings import ApiSettings

COMMON = {"access_log": False, "log_config": None, "lifespan": "on", "timeout_graceful_shutdown": 10}


def serve(platform: Settings, api: ApiSettings) -> None:
    if api.workers == 1:
        config = uvicorn.Config(create_app(platform, api), host=api.host, port=api.port, **COMMON)  # type: ignore[arg-type]
        uvicorn.Server(config).run()
        return
    # Several processes on one socket: each builds its app from the environment (the CLI put
    # its options there), with its own read model and audit journal.
    uvicorn.run(
        "sharing_api.main:app_from_environment",
        factory=True,
        workers=api.workers,
        host=api.host,
        port=api.port,
        **COMMON,  # type: ignore[arg-type]
    )
