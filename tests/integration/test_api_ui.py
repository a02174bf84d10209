"""The clinician page (/ui) in headless Chromium: sign in with a hospital token, break the glass
for a patient whose history spans cities, page through it, and see a refusal; the resident ID
travels only in a header or a request body, so it never reaches a URL or the API's log. Leaves
a screenshot in artifacts/ui-clinician.png."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pytest

from lakehouse.topology import Topology
from sharing_api.catalog import HISTORY
from tests.utils.browser import ARTIFACTS, TIMEOUT_MS, chromium_page, look_up, sign_in

if TYPE_CHECKING:
    import pyarrow as pa
    from playwright.sync_api import Request

    from tests.utils.api import ApiServer
    from tests.utils.province import Province

pytestmark = pytest.mark.integration

PAGE_SIZE = 10  # small, so that the page's "More" (cursor paging) is exercised


def _histories(province: Province) -> tuple[collections.Counter[str], dict[str, set[str]]]:
    """Entries per person_key and the cities they come from, straight from the written tables."""
    counts: collections.Counter[str] = collections.Counter()
    cities: dict[str, set[str]] = collections.defaultdict(set)
    for dataset in HISTORY:
        table = province.tables[dataset]
        for row in pc.value_counts(table["person_key"]).to_pylist():
            counts[row["values"]] += row["counts"]
        pairs = table.select(["person_key", "city"]).group_by(["person_key", "city"]).aggregate([])
        for key, city in zip(pairs["person_key"].to_pylist(), pairs["city"].to_pylist(), strict=True):
            cities[key].add(city)
    return counts, cities


def _rows_of(table: pa.Table, key: str) -> int:
    return int(pc.sum(pc.equal(table["person_key"], key)).as_py() or 0)


def test_clinician_page(api_server: ApiServer, province_data: Province, topology: Topology) -> None:
    counts, cities = _histories(province_data)
    index = next(
        i
        for i, key in enumerate(province_data.person_keys)
        if len(cities.get(str(key), ())) >= 2 and counts[str(key)] > PAGE_SIZE
    )
    resident_id = province_data.resident_ids[index]
    key = str(province_data.person_keys[index])
    expected_total = counts[key]
    expected_cities = cities[key]
    hospital = next(h for h in topology.hospitals if h.id == "zz-c1")
    county = next(h for h in topology.hospitals if h.level == "county")
    with chromium_page() as page:
        requests: list[Request] = []
        page.on("request", lambda request: requests.append(request))
        response = page.goto(f"{api_server.url}/ui", timeout=TIMEOUT_MS)
        assert response is not None and response.ok
        assert "default-src 'self'" in (response.headers.get("content-security-policy") or "")

        # 1. Sign in; the token lives in sessionStorage only.
        whoami = sign_in(page, api_server.issue(hospital.id))
        assert f"Signed in as {hospital.name} ({hospital.city}, {hospital.level})" in whoami, whoami
        assert page.evaluate("() => localStorage.length") == 0
        assert page.evaluate("() => sessionStorage.getItem('medshare.token')")

        # The break-glass reason is offered for emergencies only.
        assert page.locator("#reason").is_hidden()
        page.select_option("#purpose", "emergency")
        assert page.locator("#reason").is_visible()

        # 2. An emergency lookup (break-glass, with its reason): the whole history across cities,
        # newest first.
        reason = "unconscious on arrival, allergies unknown"
        look_up(page, resident_id, "emergency", PAGE_SIZE, reason)
        assert page.locator("#error").is_hidden(), page.text_content("#error")
        assert page.get_attribute("#timeline", "data-page-size") == str(PAGE_SIZE)
        rows = page.locator("#timeline tr.entry")
        assert rows.count() == min(expected_total, PAGE_SIZE)
        assert page.locator("#more").is_visible()
        summary = str(page.text_content("#summary"))
        assert f"{expected_total} entr" in summary, summary
        assert "BREAK-GLASS" in summary and reason in summary
        decisions = page.locator("#decisions li.allowed")
        assert decisions.count() == len(HISTORY)
        assert "emergency-all" in str(page.text_content("#decisions"))
        assert page.locator("#missing").is_hidden()
        pages = 1
        while page.locator("#more").is_visible():
            pages += 1
            shown = rows.count()
            page.click("#more")
            page.wait_for_function(
                f"() => document.querySelectorAll('#timeline tr.entry').length > {shown}",
                timeout=TIMEOUT_MS,
            )
        assert rows.count() == expected_total
        assert pages == -(-expected_total // PAGE_SIZE)
        assert f"showing {expected_total}" in str(page.text_content("#summary"))
        shown_cities = set(rows.evaluate_all("rs => rs.map(r => r.dataset.city)"))
        assert shown_cities == expected_cities
        assert len(shown_cities) >= 2
        types = rows.evaluate_all("rs => rs.map(r => r.dataset.type)")
        per_type = {d: _rows_of(province_data.tables[d], key) for d in HISTORY}
        assert collections.Counter(types) == collections.Counter({d: n for d, n in per_type.items() if n})
        times = rows.evaluate_all("rs => rs.map(r => r.cells[0].textContent)")
        assert times == sorted(times, reverse=True)

        # 3. The artifact.
        page.mouse.move(0, 0)  # no hover highlight in the picture
        page.screenshot(path=str(ARTIFACTS / "ui-clinician.png"), full_page=True)

        # 4. An emergency without a reason is refused, and the page says what is missing.
        whoami = sign_in(page, api_server.issue(county.id))
        assert f"Signed in as {county.name}" in whoami, whoami
        look_up(page, resident_id, "emergency", reason="")
        assert page.locator("#error").is_visible()
        assert "reason_required" in str(page.text_content("#error"))
        assert page.locator("#results").is_hidden()
        page.screenshot(path=str(ARTIFACTS / "ui-clinician-denied.png"))
        # The county's own records of the patient (operations): a GET with the ID in a header.
        look_up(page, resident_id, "operations")
        assert page.locator("#results").is_visible() or "not_under_care" not in str(
            page.text_content("#error")
        )

        # A malformed resident ID is caught before any request.
        page.fill("#resident-id", "12345")
        page.click("#lookup")
        assert "invalid_patient" in str(page.text_content("#error"))
        assert "/v1/patients" not in page.url and resident_id not in page.url
        history_calls = [r for r in requests if "/v1/patients/history" in r.url]
        assert history_calls and all(r.headers.get("x-resident-id") == resident_id for r in history_calls)
        # Break-glass lookups carry the ID and the reason in the body of a POST, never in a URL.
        emergency_calls = [r for r in requests if "/v1/patients/emergency" in r.url]
        assert len(emergency_calls) >= 2 and all(r.method == "POST" for r in emergency_calls)
        assert all(resident_id in (r.post_data or "") for r in emergency_calls)
        assert not [r.url for r in requests if resident_id in r.url or "allergies" in r.url]

    # 5. The page sent the resident ID as a header: it is nowhere in the API's log.
    log = api_server.log.read_text(errors="replace")
    assert "GET /v1/patients/history" in log and "POST /v1/patients/emergency" in log
    assert resident_id not in log
