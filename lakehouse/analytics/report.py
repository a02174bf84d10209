"""The analysts' HTML report of the gold tables: one self-contained page (inline CSS and SVG charts
drawn by matplotlib, no scripts, nothing fetched), a section per standard job.

Each section says when its table was written and with which k, draws one or two charts for
planners and lists the first rows. Suppressed cells (fewer than k patients) read `<k` in the table
and are left out of every chart total.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakehouse.analytics.icd10 import TITLES
from lakehouse.analytics.jobs import JOBS, LEVELS, AnalyticsError, Job
from lakehouse.analytics.privacy import SUPPRESSED
from lakehouse.analytics.session import Locations
from lakehouse.analytics.settings import AnalyticsSettings
from lakehouse.errors import StorageError
from lakehouse.settings import Settings
from lakehouse.storage import ANALYTICS_SITE, delta_storage_options, site_credentials
from lakehouse.topology import load_topology

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from matplotlib.figure import Figure

MAX_ROWS = 50
Chart = tuple[str, "Figure"]


@dataclass(frozen=True)
class Gold:
    """One gold table as read, with its latest commit's metadata."""

    job: Job
    uri: str
    table: pa.Table
    k: int | None
    written_at: dt.datetime


def read_gold(job: Job, uri: str, options: dict[str, str]) -> Gold | None:
    """The gold table at `uri`, or None when the job has not written it yet."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        delta = DeltaTable(uri, storage_options=options)
        commit = delta.history(1)[0]
        table = delta.to_pyarrow_table()
    except TableNotFoundError:
        return None
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read gold table {uri}: {exc}") from exc
    try:
        meta = json.loads(commit.get("userMetadata") or "{}")
    except json.JSONDecodeError:
        meta = {}
    seconds = meta.get("written_at") or commit["timestamp"] / 1000
    k = meta.get("k")
    return Gold(
        job, uri, table, int(k) if k is not None else None, dt.datetime.fromtimestamp(seconds, dt.UTC)
    )


def _figure(width: float = 8.0, height: float = 3.4) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg")  # pandas' plotting imports pyplot: never a GUI backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _lines(pivot: pd.DataFrame, ylabel: str) -> Figure:
    fig, ax = _figure()
    pivot.plot(ax=ax, marker="o", markersize=3)
    ax.set(xlabel="month", ylabel=ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(alpha=0.3)
    return fig


def _bars(data: pd.DataFrame | pd.Series, label: str, kind: str = "bar", **options: Any) -> Figure:
    horizontal = kind == "barh"
    fig, ax = _figure(height=max(3.4, 0.3 * len(data)) if horizontal else 3.4)
    data.plot(ax=ax, kind=kind, **options)
    if horizontal:
        ax.set(xlabel=label, ylabel="")
    else:
        ax.set_ylabel(label)
    if ax.get_legend() is not None:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return fig


def _heatmap(matrix: pd.DataFrame, label: str) -> Figure:
    import numpy as np

    fig, ax = _figure(6.0, 4.0)
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(matrix.columns)), list(matrix.columns))
    ax.set_yticks(range(len(matrix.index)), list(matrix.index))
    ax.set(xlabel="to care level", ylabel="from care level")
    half = values.max() / 2
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:,.0f}", ha="center", va="center", color="white" if value > half else "black")
    fig.colorbar(image, ax=ax, label=label)
    return fig


def _level_order(values: pd.Index) -> list[str]:
    return [v for v in LEVELS if v in values] + sorted(v for v in values if v not in LEVELS)


def _short_title(chapter: str) -> str:
    return TITLES.get(chapter, chapter).removeprefix("Diseases of the ").removeprefix("Certain ")


def charts(name: str, df: pd.DataFrame) -> list[Chart]:
    """The charts of one job's released (unsuppressed) rows."""
    if df.empty:
        return []
    if name == "disease_burden":
        df = df.assign(chapter=df["icd10_chapter"] + " " + df["icd10_chapter"].map(_short_title))
        by_month = df.pivot_table(index="month", columns="chapter", values="patients", aggfunc="sum")
        by_city = df.pivot_table(index="city", columns="chapter", values="diagnoses", aggfunc="sum")
        return [
            ("Patients per month by ICD-10 chapter (summed over cities)", _lines(by_month, "patients")),
            ("Diagnoses per city by ICD-10 chapter", _bars(by_city, "diagnoses", stacked=True, rot=0)),
        ]
    if name == "teleconsultation_load":
        by_centre = df.pivot_table(
            index="month", columns="specialist_centre", values="requests", aggfunc="sum"
        )
        answered = df.dropna(subset=["turnaround_median_min"])
        weighted = (answered["turnaround_median_min"] * answered["answered"]).groupby(
            answered["requesting_level"]
        ).sum() / answered.groupby("requesting_level")["answered"].sum()
        weighted = weighted.reindex(_level_order(weighted.index))
        return [
            ("Teleconsultation requests per month by specialist centre", _lines(by_centre, "requests")),
            (
                "Median turnaround by requesting care level (mean of the monthly medians, weighted by "
                "answered requests)",
                _bars(weighted, "minutes", legend=False, rot=0),
            ),
        ]
    if name == "imaging_use":
        by_city = df.pivot_table(index="city", columns="modality", values="studies", aggfunc="sum")
        return [("Imaging studies per city by modality", _bars(by_city, "studies", rot=0))]
    if name == "readmissions_30d":
        rates = df.assign(label=df["hospital_id"] + " (" + df["level"].fillna("?") + ")")
        rates = rates.set_index("label")["readmission_rate"].sort_values() * 100
        return [("30-day readmission rate per hospital (%)", _bars(rates, "%", kind="barh", legend=False))]
    if name == "referral_flows":
        matrix = df.pivot_table(
            index="from_level", columns="to_level", values="referrals", aggfunc="sum", fill_value=0
        )
        matrix = matrix.reindex(index=_level_order(matrix.index), columns=_level_order(matrix.columns))
        by_direction = df.pivot_table(index="month", columns="direction", values="referrals", aggfunc="sum")
        return [
            (
                "Referrals between care levels (all months, released cells)",
                _heatmap(matrix.fillna(0), "referrals"),
            ),
            ("Referrals per month by direction", _lines(by_direction, "referrals")),
        ]
    return []


def svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (text kept as text, no external references)."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "medshare"}):
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _cell(value: object, suppressed: bool, k: int | None) -> str:
    if suppressed:
        return f'<td class="suppressed">&lt;{k or "k"}</td>'
    if value is None:
        return '<td class="null">–</td>'
    if isinstance(value, float):
        return f'<td class="num">{f"{value:,.4f}".rstrip("0").rstrip(".")}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def rows_table(gold: Gold) -> str:
    job, table = gold.job, gold.table
    rest = [c for c in table.column_names if c not in (*job.keys, *job.measures, SUPPRESSED)]
    columns = [*job.keys, *rest, *[m for m in job.measures if m in table.column_names]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in table.slice(0, MAX_ROWS).to_pylist():
        hidden = bool(row[SUPPRESSED])
        cells = "".join(_cell(row[c], hidden and c in job.measures, gold.k) for c in columns)
        body.append(f'<tr data-suppressed="{str(hidden).lower()}">{cells}</tr>')
    more = table.num_rows - MAX_ROWS
    note = f'<p class="more">{more:,} more row(s) not shown.</p>' if more > 0 else ""
    return (
        f'<table data-table="{html.escape(job.name)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{note}"
    )


def section(gold: Gold) -> str:
    job, table = gold.job, gold.table
    hidden = int(table[SUPPRESSED].to_numpy(zero_copy_only=False).sum())
    frame = table.to_pandas()
    released = frame[~frame[SUPPRESSED]]
    figures = (
        "".join(
            f'<figure data-chart="{html.escape(job.name)}">{svg(fig)}<figcaption>{html.escape(caption)}'
            "</figcaption></figure>"
            for caption, fig in charts(job.name, released)
        )
        or "<p>Nothing to chart: every row is suppressed.</p>"
    )
    k = gold.k or "k"
    return (
        f'<section id="{job.name}" data-job="{job.name}" data-rows="{table.num_rows}">'
        f"<h2>{html.escape(job.title)}</h2>"
        f'<p class="meta"><code>gold.{html.escape(job.name)}</code> · written '
        f"{gold.written_at:%Y-%m-%d %H:%M} UTC · k = {html.escape(str(k))} · {table.num_rows:,} row(s)</p>"
        f'<p class="suppression">{hidden:,} of {table.num_rows:,} row(s) suppressed '
        f"({hidden * len(job.measures):,} cells): fewer than {k} patients, shown as &lt;{k} in the table "
        "and excluded from the chart totals.</p>"
        f'<div class="charts">{figures}</div>{rows_table(gold)}</section>'
    )


def missing(job: Job, uri: str) -> str:
    return (
        f'<section id="{html.escape(job.name)}" data-job="{html.escape(job.name)}" data-missing="true">'
        f"<h2>{html.escape(job.title)}</h2><p>This job has not been run: no gold table at "
        f"<code>{html.escape(uri)}</code>. Run it with <code>medshare analytics run "
        f"{html.escape(job.name)}</code>.</p></section>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; }
section { border-top: 1px solid #ccc; margin-top: 2rem; }
.meta, .suppression, .more, figcaption { color: #555; font-size: 0.9rem; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; max-width: 100%; }
figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.8rem; margin-top: 1rem; }
th, td { border: 1px solid #ddd; padding: 0.15rem 0.5rem; text-align: left; }
td.num, td.suppressed { text-align: right; font-variant-numeric: tabular-nums; }
td.suppressed { color: #a33; }
"""


def write_report(platform: Settings, analytics: AnalyticsSettings, out: Path) -> Path:
    """Write the report of every gold table to `out`; the path written."""
    where = Locations.of(analytics, load_topology(platform.platform_dir))
    options = delta_storage_options(platform, site_credentials(platform, ANALYTICS_SITE))
    golds = {name: read_gold(job, where.gold(name), options) for name, job in JOBS.items()}
    if all(g is None for g in golds.values()):
        raise AnalyticsError(
            f"no gold tables under {where.gold_root}: run the standard jobs first "
            "(`medshare analytics run all`)"
        )
    sections = "".join(
        section(g) if g is not None else missing(JOBS[name], where.gold(name)) for name, g in golds.items()
    )
    now = dt.datetime.now(dt.UTC)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Provincial analytics report</title><style>{STYLE}</style></head><body>"
        "<h1>Provincial analytics report</h1>"
        f'<p class="meta">Gold tables under <code>{html.escape(where.gold_root)}</code> · generated '
        f"{now:%Y-%m-%d %H:%M} UTC. Cells counting fewer than k distinct patients are suppressed.</p>"
        f"{sections}</body></html>\n"
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise AnalyticsError(f"cannot write the report to {out}: {exc}") from exc
    return out
