"""The clinician page: a static page that calls the API from the browser with the user's token."""

from __future__ import annotations

import html
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from sharing_api.deps import ServicesDep

router = APIRouter(include_in_schema=False)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@router.get("/ui")
def clinician_page(s: ServicesDep) -> HTMLResponse:
    page = resources.files("sharing_api").joinpath("static/ui.html").read_text(encoding="utf-8")
    # The page knows every provincial site's API and may call them (it fails over between them).
    sites = [origin(u) for u in s.api.site_urls(s.platform)]
    page = page.replace("{{SITES}}", html.escape(",".join(sites), quote=True))
    connect = " ".join(["'self'", *sites])
    return HTMLResponse(
        page,
        headers={
            "Cache-Control": "no-store",
            # One self-contained page: inline script and style, nothing from elsewhere, never framed;
            # requests only to the provincial sites' APIs.
            "Content-Security-Policy": (
                f"default-src 'self' 'unsafe-inline'; connect-src {connect}; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
