"""Runs the API: a supervisor process holding the instance's keeper (audit flush, table watch) and
uvicorn worker processes answering requests, with our access log (uvicorn's would print query
strings).

Always a supervisor, one worker included: the keeper's work must not share a GIL with a request
loop (see `keeper`), and on SIGTERM the supervisor stops the workers first, then appends the last
journal records, then exits — so a clean stop leaves the audit table complete.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

from lakehouse.settings import Settings
from sharing_api.services import build_keeper
from sharing_api.settings import ApiSettings

log = logging.getLogger(__name__)
COMMON = {"access_log": False, "log_config": None, "lifespan": "on", "timeout_graceful_shutdown": 10}
STARTUP_FAILURE = 3  # uvicorn's exit code of a worker that could not start
_PR_SET_PDEATHSIG = 1


def serve(platform: Settings, api: ApiSettings) -> None:
    # Each worker builds its app from the environment (the CLI put its options there).
    config = uvicorn.Config(
        "sharing_api.main:app_from_environment",
        factory=True,
        workers=api.workers,
        host=api.host,
        port=api.port,
        # X-Forwarded-For is believed only from the proxies named in the settings: uvicorn's
        # default trusts it from loopback, which let any local client forge its audited address
        # and dodge the per-address limit on failed logins.
        proxy_headers=bool(api.trusted_proxies),
        forwarded_allow_ips=api.trusted_proxies or None,
        **COMMON,  # type: ignore[arg-type]
    )
    keeper = build_keeper(platform, api)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    keeper.start()
    try:
        supervisor.run()
    finally:
        keeper.stop()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        log.error("the API workers could not start (see above)")
        sys.exit(STARTUP_FAILURE)


def die_with_supervisor() -> None:
    """In a worker: be killed when the supervisor dies (kill -9 included), rather than serve on
    without an audit flusher or hold the port against the next start."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent.pid:  # it died before the call
        os.kill(os.getpid(), signal.SIGKILL)
