"""A client of the sharing API that knows every provincial site and fails over between them.

Both sites serve; a client sticks to the one that answered last. A request that gets no answer —
connection refused or reset, a timeout — or a 502/503/504 (a site going down behind its proxy) is
tried on the next site, round the list, until one answers or `retry_seconds` have passed. Any
other answer, 4xx included, is the API's decision and is returned as it is. A request other than
GET is tried again only when it cannot have reached a site (the connection was never made), so
nothing is done twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from lakehouse.errors import MedshareError

RETRIED_STATUS = frozenset({502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


class SitesUnavailable(MedshareError):
    """No provincial site answered in time."""


class FailoverClient:
    def __init__(
        self,
        urls: Sequence[str],
        token: str | None = None,
        *,
        retry_seconds: float = 30.0,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
    ):
        if not urls:
            raise ValueError("at least one site's URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.retry_seconds = retry_seconds
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Timeout(timeout, connect=connect_timeout)
        self._clients = [httpx.Client(base_url=u, headers=headers, timeout=limits) for u in self.urls]
        self.current = 0  # the site that answered last
        self.failovers = 0

    @property
    def site(self) -> str:
        return self.urls[self.current]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + self.retry_seconds
        problems: list[str] = []
        tried = 0
        while True:
            client = self._clients[self.current]
            try:
                response = client.request(method, path, **kwargs)
                if response.status_code not in RETRIED_STATUS:
                    return response
                problem = f"{response.status_code} {response.reason_phrase}"
            except httpx.TransportError as exc:
                if method.upper() != "GET" and not isinstance(exc, _NOT_SENT):
                    raise SitesUnavailable(
                        f"{method} {path} at {self.site} got no answer ({type(exc).__name__}); "
                        "not sent again: it may have been done"
                    ) from exc
                problem = f"{type(exc).__name__}: {exc}"
            problems.append(f"{self.site}: {problem}")
            self.current = (self.current + 1) % len(self.urls)
            self.failovers += 1
            tried += 1
            if time.monotonic() >= deadline:
                raise SitesUnavailable(
                    f"no provincial site answered {method} {path} within {self.retry_seconds:.0f} s: "
                    + "; ".join(problems[-len(self.urls) :])
                )
            if tried % len(self.urls) == 0:
                time.sleep(0.5)  # every site refused: give them a moment

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
