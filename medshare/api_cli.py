"""`medshare serve` and `medshare hospitals …`: the sharing API and its credentials."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lakehouse.errors import MedshareError
from lakehouse.settings import get_settings
from medshare.sites import SiteOption, site_settings
from medshare.ui import console, fail, service_logging

if TYPE_CHECKING:
    from sharing_api.identities import Identities, IssuedToken, Kind

log = logging.getLogger("medshare.api")

hospitals = typer.Typer(
    help="Credentials of hospitals and operators for the sharing API (stored hashed; a token is shown once).",
    no_args_is_help=True,
)


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


By = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who is doing this: recorded with the credential and in the audit trail "
        "(default <user>@<host> of this shell).",
    ),
]


def _who(by: str | None) -> str:
    import getpass
    import socket

    return (by or f"{getpass.getuser()}@{socket.gethostname()}")[:64]


def _audit(action: str, who: str, detail: str, *, hospital: str | None = None) -> None:
    """Every credential change made here is in the audit trail beside the API's own records."""
    import socket
    import uuid

    from sharing_api.audit import AuditRecord, record_offline
    from sharing_api.settings import load_api_settings

    platform, api = get_settings(), load_api_settings()
    record = AuditRecord(
        request_id=uuid.uuid4().hex,
        method="CLI",
        route=f"medshare hospitals {action}",
        client_address=f"cli@{socket.gethostname()}",
        principal_kind="operator",
        principal=who,
        hospital_id=hospital,
        decision="allow",
        detail=detail,
    )
    record_offline(lambda slot: api.journal_lock(platform, slot), record)


def _audit_issued(store: Identities, issued: IssuedToken, action: str, who: str, detail: str) -> None:
    """Audit a new credential; one that cannot be audited is revoked at once, never handed out."""
    import sqlite3

    from sharing_api.journal import AuditUnavailable

    hospital = issued.subject if issued.kind == "hospital" else None
    try:
        _audit(action, who, detail, hospital=hospital)
    except (AuditUnavailable, OSError, sqlite3.Error) as exc:
        store.revoke(issued.token_id)
        raise MedshareError(
            f"{action} could not be audited ({exc}); the new credential {issued.token_id} was revoked"
        ) from exc


def _identities() -> Identities:
    from sharing_api.services import identities
    from sharing_api.settings import load_api_settings

    return identities(get_settings(), load_api_settings())


def _ship() -> None:
    """Send this host's recorded changes to the operations topic now, so the other provincial
    site applies them within seconds; when no broker answers they wait in the outbox and the
    API's keeper sends them later."""
    from sharing_api.services import ship_changes
    from sharing_api.settings import load_api_settings

    try:
        ship_changes(get_settings(), load_api_settings())
    except MedshareError as exc:
        console.print(
            f"[yellow]warning[/yellow]: the change holds at this site; it reaches the other site "
            f"when a broker answers ({exc})"
        )


def _issued(issued: IssuedToken) -> None:
    console.print(
        f"[green]issued[/green] credential [bold]{issued.token_id}[/bold] for {issued.kind} "
        f"{issued.subject}, expires {_when(issued.expires_at)}.\n"
        "The token is shown this once (the platform keeps only its hash). "
        "OAuth2: client id = the credential id, client secret = the part after the dot."
    )
    # The token alone on stdout, so scripts can capture it: TOKEN=$(medshare hospitals issue-token …)
    print(issued.token)


@hospitals.command("issue-token")
def issue_token(
    subject: Annotated[
        str,
        typer.Argument(help="Hospital id (see platform/topology.yaml), or an operator name with --operator."),
    ],
    operator: Annotated[
        bool, typer.Option("--operator", help="An operator credential (admin and audit endpoints).")
    ] = False,
    days: Annotated[
        float | None, typer.Option(help="Lifetime in days (default MEDSHARE_API_CREDENTIAL_DAYS, 90).")
    ] = None,
    label: Annotated[str, typer.Option(help="A note shown in listings, e.g. the system that uses it.")] = "",
    by: By = None,
) -> None:
    """Issue a bearer credential; prints the token once on stdout. Audited, with who issued it."""
    from sharing_api.errors import ApiError
    from sharing_api.settings import load_api_settings

    try:
        store, who = _identities(), _who(by)
        lifetime = days if days is not None else load_api_settings().credential_days
        kind: Kind = "operator" if operator else "hospital"
        issued = store.issue(kind, subject, days=lifetime, label=label, issued_by=who)
        detail = f"issued credential {issued.token_id} for {kind} {subject}"
        _audit_issued(store, issued, "issue-token", who, detail)
        _ship()
        _issued(issued)
    except (MedshareError, ApiError) as exc:
        fail(exc)


@hospitals.command()
def profile(
    hospital: Annotated[str, typer.Argument(help="Hospital id (see platform/topology.yaml).")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write it (default ./<hospital>.share); written mode 0600.")
    ] = None,
    days: Annotated[
        float | None,
        typer.Option(help="Lifetime of its credential in days (default MEDSHARE_API_CREDENTIAL_DAYS)."),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="The sharing endpoint as the hospital reaches it (default MEDSHARE_API_PUBLIC_URL "
            "or the API's own address, + /delta-sharing/)."
        ),
    ] = None,
    by: By = None,
) -> None:
    """Write a Delta Sharing profile file for a hospital, with a new credential of its own — one
    file per provincial site (`<hospital>.share`, `<hospital>.<site>.share`): if one site is down
    the hospital's tools use the other's.

    Give the file to the hospital: `delta_sharing.SharingClient("<file>").list_all_tables()` then
    lists what its grants allow, and `delta_sharing.load_as_pandas("<file>#research.province.encounters")`
    reads a table. Revoke it with `medshare hospitals revoke <id>` like any credential.
    """
    from sharing_api.errors import ApiError
    from sharing_api.profile import profile_document, write_profile
    from sharing_api.settings import load_api_settings

    try:
        api = load_api_settings()
        lifetime = days if days is not None else api.credential_days
        who = _who(by)
        issued = _identities().issue(
            "hospital", hospital, days=lifetime, label="delta-sharing profile", issued_by=who
        )
        _audit(
            "profile", who, f"issued credential {issued.token_id} for hospital {hospital}", hospital=hospital
        )
        _ship()
        target = out or Path(f"{hospital}.share")
        written = [target]
        write_profile(target, profile_document(endpoint or api.sharing_endpoint(), issued))
        if endpoint is None:
            # The protocol's profile names one endpoint: one file per other provincial site, with
            # the same credential (it holds at every site).
            settings = get_settings()
            for site, url in list(zip(settings.site_ids, api.site_urls(settings), strict=False))[1:]:
                other = target.with_name(f"{target.stem}.{site}{target.suffix}")
                write_profile(other, profile_document(url.rstrip("/") + "/delta-sharing/", issued))
                written.append(other)
    except (MedshareError, ApiError, OSError) as exc:
        fail(exc)
    console.print(
        f"[green]wrote[/green] {', '.join(map(str, written))}: Delta Sharing profile of {hospital} "
        f"(credential "
        f"[bold]{issued.token_id}[/bold], expires {_when(issued.expires_at)}). It holds a secret: send it "
        "to the hospital over a secure channel."
    )


@hospitals.command()
def revoke(
    token_id: Annotated[str, typer.Argument(help="The credential id (the part after mst_, before the dot).")],
    by: By = None,
) -> None:
    """Revoke a credential at once, with every access token obtained with it. Audited."""
    from sharing_api.errors import ApiError

    try:
        info = _identities().revoke(token_id)
        _ship()
        hospital = info.subject if info.kind == "hospital" else None
        _audit("revoke", _who(by), f"revoked credential {token_id}", hospital=hospital)
    except (MedshareError, ApiError) as exc:
        fail(exc)
    console.print(f"[green]revoked[/green] {info.token_id} ({info.kind} {info.subject})")


@hospitals.command()
def rotate(
    token_id: Annotated[str, typer.Argument(help="The credential to replace.")],
    grace_hours: Annotated[
        float | None, typer.Option(help="How long the old one keeps working (default 24).")
    ] = None,
    by: By = None,
) -> None:
    """Issue a replacement credential; the old one expires after a grace period. Audited."""
    from sharing_api.errors import ApiError
    from sharing_api.settings import load_api_settings

    try:
        api, who = load_api_settings(), _who(by)
        grace = grace_hours if grace_hours is not None else api.rotation_grace_hours
        store = _identities()
        new = store.rotate(token_id, grace_hours=grace, days=api.credential_days, issued_by=who)
        _audit_issued(store, new, "rotate", who, f"rotated credential {token_id} to {new.token_id}")
        _ship()
        _issued(new)
    except (MedshareError, ApiError) as exc:
        fail(exc)
    console.print(f"the old credential {token_id} stops working in {grace} h")


@hospitals.command("tokens")
def list_tokens() -> None:
    """List credentials: id, subject, expiry, revocation (never secrets)."""
    table = Table("kind", "subject", "expires", "revoked", "label", "issued by")
    table.add_column("id", no_wrap=True, min_width=16)
    try:
        rows = _identities().list()
    except MedshareError as exc:
        fail(exc)
    for c in rows:
        table.add_row(
            c.kind, c.subject, _when(c.expires_at), _when(c.revoked_at), c.label, c.issued_by, c.token_id
        )
    console.print(table)


def serve(
    host: Annotated[
        str | None, typer.Option(help="Listen address (default MEDSHARE_API_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default MEDSHARE_API_PORT, 8040).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (default MEDSHARE_API_WORKERS, 1); each holds its own read model."
        ),
    ] = None,
    site: SiteOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Debug logging.")] = False,
) -> None:
    """Run the sharing API (FastAPI on uvicorn): patient history, dataset queries, audit, admin, /ui.

    Reads the provincial tables from the lakehouse (MEDSHARE_* settings) and the grants from
    platform/grants.yaml (MEDSHARE_API_GRANTS_FILE); OpenAPI at /docs. Stops cleanly on SIGTERM,
    flushing the audit journal to the audit table. With two provincial sites each runs its own
    (`--site b`: that site's store, broker and state folder, on port + 1); changes to credentials,
    consents, reviews and grants made at either reach the other through the operations topic."""
    import os

    from sharing_api.serve import serve as run
    from sharing_api.settings import load_api_settings

    service_logging(verbose)
    # Through the environment: worker processes read their settings from it.
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"MEDSHARE_API_{name}"] = str(value)
    try:
        if site is not None:
            stack = get_settings()
            chosen = site_settings(site)
            os.environ.update(chosen.site_environment())
            if port is None:
                index = stack.site_ids.index(chosen.site_id)
                os.environ["MEDSHARE_API_PORT"] = str(load_api_settings().port + index)
            get_settings.cache_clear()
        api = load_api_settings()
        log.info(
            "sharing API on http://%s:%d, %d worker(s) (docs at /docs, clinician page at /ui)",
            api.host,
            api.port,
            api.workers,
        )
        run(get_settings(), api)
    except MedshareError as exc:
        fail(exc)


def history(
    resident_id: Annotated[
        str, typer.Argument(help="The patient's resident ID (sent in a header, never a URL).")
    ],
    purpose: Annotated[str, typer.Option(help="Why: treatment or operations.")] = "treatment",
    limit: Annotated[int, typer.Option(help="Entries per page (newest first).")] = 50,
    token_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the hospital's bearer token (default: MEDSHARE_API_TOKEN)."),
    ] = None,
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url",
            help="The API at each provincial site, tried in order (repeatable; default MEDSHARE_API_URLS, "
            "or this host's sites).",
        ),
    ] = None,
) -> None:
    """Look up a patient's shared history as a hospital, at whichever provincial site answers:
    a site that does not answer is left for the other within seconds (`sharing_api.client`)."""
    import json
    import os

    from sharing_api.client import FailoverClient
    from sharing_api.settings import load_api_settings

    token = token_file.read_text().strip() if token_file else os.environ.get("MEDSHARE_API_TOKEN", "")
    if not token:
        fail(MedshareError("no token: set MEDSHARE_API_TOKEN or give --token-file"))
    try:
        urls = url or load_api_settings().site_urls(get_settings())
        with FailoverClient(urls, token) as client:
            response = client.get(
                "/v1/patients/history",
                params={"purpose": purpose, "limit": limit},
                headers={"X-Resident-Id": resident_id},
            )
            site = client.site
    except MedshareError as exc:
        fail(exc)
    if response.status_code != 200:
        fail(MedshareError(f"{site} answered {response.status_code}: {response.text[:500]}"))
    body = response.json()
    typer.echo(json.dumps(body, ensure_ascii=False, indent=2))  # the data on stdout, for pipes
    console.print(f"{len(body.get('entries', []))} entr(ies) from {site}", style="dim")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(history)
    app.add_typer(hospitals, name="hospitals")
