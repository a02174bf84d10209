"""The `--site` option of the commands that act as one provincial site."""

from __future__ import annotations

from typing import Annotated

import typer

from lakehouse.settings import Settings, get_settings

SiteOption = Annotated[
    str | None,
    typer.Option(
        "--site",
        help="Act as this provincial site of a two-site development stack (a, b or its full id: its "
        "object store, broker and state folder); default: the settings as they are.",
    ),
]


def site_settings(site: str | None) -> Settings:
    settings = get_settings()
    return settings if site is None else settings.for_site(settings.site_named(site))
