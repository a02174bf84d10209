"""The clinician page: a static page that calls the API from the browser with the user's token."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def clinician_page() -> HTMLResponse:
    page = resources.files("sharing_api").joinpath("static/ui.html").read_text(encoding="utf-8")
    return HTMLResponse(
        page,
        headers={
            "Cache-Control": "no-store",
            # One self-contained page: inline script and style, nothing from elsewhere, never framed.
            "Content-Security-Policy": "default-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
