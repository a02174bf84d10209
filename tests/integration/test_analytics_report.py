"""`medshare analytics report`: one self-contained HTML page over the gold tables, checked in
headless Chromium (every job's chart drawn, its rows listed as in the gold table, suppressed cells
shown as "<k"), a page naming the jobs not run yet, and a clear failure when there is no gold table
at all. Leaves a screenshot in artifacts/analytics-report.png."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from lakehouse.analytics.jobs import JOBS
from lakehouse.analytics.report import MAX_ROWS
from lakehouse.settings import Settings
from lakehouse.storage import ANALYTICS_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology
from tests.integration.conftest import AnalyticsRun, analytics_env, run_analytics
from tests.utils.browser import ARTIFACTS, TIMEOUT_MS, chromium_page

pytestmark = pytest.mark.integration

K = 5
# A reference that would make the browser fetch something: src/href/url() to another origin.
REMOTE = re.compile(r"""(?:\bsrc|\bhref|url\()\s*=?\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _options(stack: Settings) -> dict[str, str]:
    return delta_storage_options(stack, site_credentials(stack, ANALYTICS_SITE))


def test_report_page(stack: Settings, analytics_run: AnalyticsRun, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    run_analytics(analytics_run.env, "report", "--out", str(out))
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not REMOTE.findall(text), REMOTE.findall(text)[:5]
    gold = {
        job: DeltaTable(
            f"{analytics_run.gold_root}/{job}", storage_options=_options(stack)
        ).to_pyarrow_table()
        for job in JOBS
    }
    with chromium_page() as page:
        fetched: list[str] = []
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(out.resolve().as_uri(), wait_until="load", timeout=TIMEOUT_MS)
        # Self-contained: the browser asked for the file itself and nothing else.
        assert [u for u in fetched if not u.startswith(("file:", "data:"))] == []

        suppressed_seen = 0
        for name, job in JOBS.items():
            table = gold[name]
            section = page.locator(f'section[data-job="{name}"]')
            assert section.count() == 1, name
            assert section.get_attribute("data-missing") is None, name
            assert job.title in str(section.locator("h2").text_content())
            assert f"k = {K}" in str(section.locator(".meta").text_content())

            # Charts: drawn with a size, at least one per job.
            charts = page.locator(f'figure[data-chart="{name}"] svg')
            assert charts.count() >= 1, name
            for i in range(charts.count()):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0, (name, i, box)

            # Rows: the gold table's count, its first MAX_ROWS listed in its order.
            assert section.get_attribute("data-rows") == str(table.num_rows)
            hidden = sum(table["suppressed"].to_pylist())
            assert str(section.locator(".suppression").text_content()).startswith(
                f"{hidden:,} of {table.num_rows:,} row(s) suppressed"
            )
            rows = page.locator(f'table[data-table="{name}"] tbody tr')
            assert rows.count() == min(table.num_rows, MAX_ROWS), name
            if table.num_rows > MAX_ROWS:
                more = str(section.locator(".more").text_content())
                assert f"{table.num_rows - MAX_ROWS:,} more row(s)" in more
            headers = page.locator(f'table[data-table="{name}"] thead th').all_text_contents()
            cells = rows.evaluate_all(
                "rs => rs.map(r => [r.dataset.suppressed, Array.from(r.cells, c => c.textContent)])"
            )
            expected = table.slice(0, MAX_ROWS).to_pylist()
            for (flag, texts), want in zip(cells, expected, strict=True):
                shown = dict(zip(headers, texts, strict=True))
                assert [shown[c] for c in job.keys] == [str(want[c]) for c in job.keys], name
                assert flag == str(want["suppressed"]).lower()
                measures = [shown[m] for m in job.measures]
                if want["suppressed"]:
                    suppressed_seen += 1
                    assert measures == [f"<{K}"] * len(job.measures), (name, shown)
                else:
                    assert f"<{K}" not in texts, (name, shown)
                    for m in job.measures:
                        if want[m] is not None:
                            assert float(shown[m].replace(",", "")) == pytest.approx(want[m], abs=1e-4)
        assert suppressed_seen > 0, "no suppressed row among the listed ones: the check did not run"

        page.screenshot(path=str(ARTIFACTS / "analytics-report.png"), full_page=True)


def test_report_names_jobs_not_run(
    stack: Settings, topology: Topology, analytics_run: AnalyticsRun, tmp_path: Path
) -> None:
    """With one gold table only, the others' sections say how to run them."""
    options = _options(stack)
    source = DeltaTable(f"{analytics_run.gold_root}/imaging_use", storage_options=options)
    gold_root = f"s3://{topology.province.buckets.gold}/partial-{uuid.uuid4().hex[:8]}"
    metadata = {"job": "imaging_use", "k": K, "written_at": 1_700_000_000.0}
    write_deltalake(
        f"{gold_root}/imaging_use",
        source.to_pyarrow_table(),
        storage_options=options,
        commit_properties=CommitProperties(custom_metadata={"userMetadata": json.dumps(metadata)}),
    )
    out = tmp_path / "report.html"
    run_analytics(analytics_env(analytics_run.tables_root, gold_root), "report", "--out", str(out))
    text = out.read_text(encoding="utf-8")
    assert 'data-chart="imaging_use"' in text
    assert "written 2023-11-14 22:13 UTC · k = 5" in text
    for name in JOBS:
        if name != "imaging_use":
            assert f'data-job="{name}" data-missing="true"' in text
            assert f"medshare analytics run {name}" in text
            assert f'data-chart="{name}"' not in text


def test_report_without_gold_tables(stack: Settings, topology: Topology, tmp_path: Path) -> None:
    """No gold table at all: exit code 1 and one clear line, no traceback, no file."""
    gold_root = f"s3://{topology.province.buckets.gold}/empty-{uuid.uuid4().hex[:8]}"
    env = analytics_env(f"s3://{topology.province.buckets.lakehouse}/unused", gold_root)
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "medshare", "analytics", "report", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ARTIFACTS.parent,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert f"no gold tables under {gold_root}" in " ".join(output.split()), output
    assert "medshare analytics run all" in output
    assert not out.exists()
