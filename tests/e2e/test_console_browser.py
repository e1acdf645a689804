"""The operator's console in a real browser (Playwright driving Debian's chromium) against the real
product (`manage.py run` on PostgreSQL and Redis): an operator finds a study that failed at
write-back, reads the error on its timeline, fixes the destination, retries and sees it complete;
a viewer finds no patient name, MRN or accession number on any page. Every page visited is
saved as a screenshot (FHIRAI_TEST_ARTIFACTS, else var/test-artifacts/screenshots/)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from pydicom import dcmread

from tests.e2e.conftest import REDIS_URL, write_study
from tests.support.fhir_upstream import FhirUpstream
from tests.support.phantom import ct_phantom
from tests.support.product import ROOT, FreshDatabase, Product, store_files

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("FHIRAI_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "console-e2e-Passw0rd"
USERS = {"olga": "operator", "vera": "viewer", "audrey": "auditor"}
# Distinctive values, so that finding one on a page can only mean it leaked (every component of
# the name is long enough not to occur by chance, unlike a middle initial).
IDENTITY = {
    "PatientName": "Brightwater^Ottilie^Marguerite",
    "PatientID": "MRN-4471902",
    "OtherPatientIDs": "ALT-6613057",
    "AccessionNumber": "ACC-88120",
}
STEP_TIMEOUT = 120.0


def _artifacts() -> Path:
    directory = Path(
        os.environ.get("FHIRAI_TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts" / "screenshots"
    )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass
class Console:
    product: Product
    upstream: FhirUpstream
    database: FreshDatabase
    study_id: int
    phi: list[str]  # what a viewer must never see: each name component, the MRNs, the accession


def _study(database: FreshDatabase) -> tuple[int, str, str]:
    with psycopg.connect(database.url) as conn:
        row = conn.execute("SELECT id, state, error FROM ingest_study ORDER BY id LIMIT 1").fetchone()
    return (row[0], row[1], row[2] or "") if row else (0, "", "")


def _users_create(product: Product) -> None:
    code = (
        "from django.contrib.auth.models import Group, User\n"
        f"for name, role in {USERS!r}.items():\n"
        f"    user = User.objects.create_user(name, password={PASSWORD!r})\n"
        "    user.groups.add(Group.objects.get_or_create(name=role)[0])\n"
    )
    product.manage("shell", "-c", code)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """One product for the module (its start and the study are most of the time): the FHIR
    upstream address is wrong (a path of the product's own that answers 404), so the study's
    write-back is refused and the study fails visibly."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    tmp = tmp_path_factory.mktemp("console")
    ph = ct_phantom(slices=12, size=64, seed=81, identity=IDENTITY)
    name = str(dcmread(BytesIO(ph.files[0])).PatientName)
    phi = [c for c in re.split(r"[\^= ]+", name) if c]
    phi += [ph.identifiers["PatientID"], IDENTITY["OtherPatientIDs"], ph.identifiers["AccessionNumber"]]
    broker = redis.Redis.from_url(REDIS_URL)
    with ExitStack() as stack:
        database = stack.enter_context(
            FreshDatabase(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fhirai"))
        )
        broker.flushdb()
        stack.callback(broker.flushdb)
        upstream = stack.enter_context(FhirUpstream())
        product = Product(
            tmp / "var",
            {
                "DATABASE_URL": database.url,
                "CELERY_BROKER_URL": REDIS_URL,
                "FHIRAI_BROKER_KEY_PREFIX": f"{database.name}:",
            },
        )
        product.env["FHIRAI_FHIR_UPSTREAM_URL"] = f"{product.http}/nowhere/fhir"
        product.manage("migrate", "--noinput")
        _users_create(product)
        stack.callback(product.stop)
        product.start()
        store_files(write_study(ph, tmp / "study"), product.dicom_port)
        deadline = time.monotonic() + STEP_TIMEOUT
        study_id, state, error = _study(database)
        while time.monotonic() < deadline and state not in ("failed", "written_back"):
            time.sleep(0.5)
            study_id, state, error = _study(database)
        assert state == "failed", f"the study is {state!r} ({error!r}), not failed\n{product.tail()}"
        yield Console(product, upstream, database, study_id, phi)


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


# Reported to the page's console by every page the browser opens: a CSP refusal raises a
# securitypolicyviolation event (Playwright's init scripts run outside the page's CSP).
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (e) => console.error(
  `CSP violation: ${e.violatedDirective} refused ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));
"""


class Shots:
    """Screenshots of each page, numbered in the order visited; and the page's CSP violations and
    script errors (`problems`), which every test asserts empty."""

    def __init__(self, page: Any, prefix: str) -> None:
        self.page, self.prefix, self.n = page, prefix, 0
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"{page.url}: script error {error}"))
        self.directory = _artifacts()
        for stale in self.directory.glob(f"{prefix}-*.png"):  # a previous run's pages
            stale.unlink()

    def _console(self, message: Any) -> None:
        text = message.text
        # An image opened on its own is shown in chromium's own viewer document, whose inline style
        # the image's CSP refuses (the image still shows): that page is the browser's, not ours.
        if self.page.url.split("?")[0].endswith(".png"):
            return
        if message.type == "error" and ("CSP violation" in text or "Content Security Policy" in text):
            self.problems.append(f"{self.page.url}: {text}")

    def __call__(self, what: str) -> Path:
        self.n += 1
        path = self.directory / f"{self.prefix}-{self.n:02d}-{what}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


def _session(
    browser: Any, console: Console, user: str, prefix: str, first: str = "/"
) -> tuple[Any, Any, Shots]:
    """Open the console at `first` as a user would: sent to the login page, logged in, sent back."""
    context = browser.new_context(base_url=console.product.http, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    shots = Shots(page, prefix)
    response = page.goto(first)
    assert response is not None and response.status == 200
    assert "/login/?next=" in page.url, page.url
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    shots("login")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert page.url == f"{console.product.http}{first}", page.url
    return context, page, shots


def _ok(response: Any) -> None:
    assert response is not None and response.status == 200, response and response.status


def _study_state(page: Any) -> str:
    return page.locator("h1 .state").inner_text().strip()


def test_operator_finds_the_failed_study_fixes_the_destination_retries_and_it_completes(browser, console):
    context, page, shots = _session(browser, console, "olga", "operator")
    try:
        assert page.locator("header .role").inner_text() == "operator"
        shots("dashboard")

        _ok(page.goto("/items/?kind=study"))
        page.select_option("select[name=state]", "failed")
        page.get_by_role("button", name="Filter", exact=True).click()
        page.wait_for_load_state()
        assert "state=failed" in page.url
        rows = page.locator("table.worklist tbody tr")
        assert rows.count() == 1, page.locator("table.worklist").inner_text()
        assert "failed" in rows.first.inner_text()
        shots("worklist-failed")
        rows.first.get_by_role("link", name=f"study {console.study_id}").click()
        page.wait_for_load_state()
        study_url = f"/items/study/{console.study_id}/"
        assert page.url.endswith(study_url)
        assert _study_state(page) == "failed"
        timeline = page.locator("table.timeline")
        failure = timeline.locator("tr", has_text="refused the report")
        assert failure.count() >= 1, timeline.inner_text()
        assert "fhir-upstream refused the report: HTTP 404" in failure.last.inner_text()
        assert "HTTP 404" in page.locator("p.err").first.inner_text()
        assert "failed" in page.locator("table.deliveries").inner_text()
        shots("study-failed")

        page.get_by_role("link", name="Configuration", exact=True).click()
        page.wait_for_load_state()
        assert page.url.endswith("/config/")
        address = page.get_by_label("address of fhir-upstream")
        assert address.input_value().endswith("/nowhere/fhir")
        row = page.locator("table.destinations tbody tr", has=address)
        row.get_by_role("button", name="Test", exact=True).click()  # the connection test says why
        page.wait_for_load_state()
        assert "/nowhere/fhir/metadata answered HTTP 404" in page.locator("ul.messages").inner_text()
        shots("config-test-refused")
        address = page.get_by_label("address of fhir-upstream")
        address.fill(console.upstream.url)
        page.locator("form", has=address).get_by_role("button", name="Save", exact=True).click()
        page.wait_for_load_state()
        assert (
            f"fhir-upstream now sends to {console.upstream.url}" in page.locator("ul.messages").inner_text()
        )
        assert page.get_by_label("address of fhir-upstream").input_value() == console.upstream.url
        shots("config-fixed")

        _ok(page.goto(study_url))
        page.get_by_role("button", name="Retry", exact=True).click()
        page.wait_for_load_state()
        assert page.locator("ul.messages li.error").count() == 0, page.locator("ul.messages").inner_text()
        assert page.locator("ul.messages li.success").count() == 1
        deadline = time.monotonic() + STEP_TIMEOUT
        while _study_state(page) != "written_back" and time.monotonic() < deadline:
            time.sleep(1)
            _ok(page.reload())
        assert _study_state(page) == "written_back", (
            f"{page.locator('table.timeline').inner_text()}\n{console.product.tail()}"
        )
        timeline_text = page.locator("table.timeline").inner_text()
        assert "written_back" in timeline_text and "retr" in timeline_text.lower(), timeline_text
        assert "delivered" in page.locator("table.deliveries").inner_text()
        shots("study-written-back")
        [sent] = console.upstream.state.all("DiagnosticReport")
        assert sent["subject"]["identifier"]["value"] == IDENTITY["PatientID"]

        _ok(page.goto("/items/?kind=study&state=written_back"))
        assert page.locator("table.worklist tbody tr").count() == 1
        shots("worklist-written-back")
        _ok(page.goto("/webhooks/"))
        shots("webhooks")
        response = page.goto("/audit/")
        assert response is not None and response.status == 403  # the auditor's page
        shots("audit-forbidden")
        assert shots.problems == [], shots.problems
    finally:
        context.close()

    context, page, shots = _session(browser, console, "audrey", "auditor", first="/audit/")
    try:
        log = page.locator("main").inner_text()
        for action in ("config.destination", "study.retry", "study.view"):
            assert action in log, log[:3000]
        assert "user:olga" in log
        shots("audit")
        assert shots.problems == []
    finally:
        context.close()


def _no_phi(console: Console, text: str, where: str) -> None:
    lowered = text.lower()
    leaked = [v for v in console.phi if v.lower() in lowered]
    assert not leaked, f"{where} shows {leaked} to a viewer"


def test_a_viewer_sees_no_patient_name_mrn_or_accession_on_any_page(browser, console):
    context, page, shots = _session(browser, console, "vera", "viewer")
    try:

        def visit(path: str, what: str, status: int = 200) -> None:
            response = page.goto(path)
            assert response is not None and response.status == status, (path, response and response.status)
            _no_phi(console, page.content(), path)
            shots(what)

        assert page.locator("header .role").inner_text() == "viewer"
        _no_phi(console, page.content(), "/ (after log in)")
        visit("/", "dashboard")
        for kind in ("study", "message", "report"):
            visit(f"/items/?kind={kind}", f"worklist-{kind}")
        assert page.goto("/items/?kind=study") is not None
        assert page.locator("table.worklist tbody tr").count() == 1
        study = f"/items/study/{console.study_id}/"
        visit(study, "study")
        assert page.locator("table.timeline tbody tr").count() >= 3
        assert page.get_by_role("button", name="Retry").count() == 0
        assert page.get_by_role("button", name="Send again").count() == 0
        assert page.get_by_role("link", name="Configuration", exact=True).count() == 0
        pngs = []
        for query in ("", "?original=1"):  # the original pixels are for identified roles only
            response = page.goto(f"{study}preview.png{query}")
            assert response is not None and response.status == 200
            assert response.headers["content-type"] == "image/png"
            pngs.append(response.body())
            _no_phi(console, pngs[-1].decode("latin-1"), f"{study}preview.png{query} (bytes)")
            _no_phi(console, page.content(), f"{study}preview.png{query}")
            shots("preview" + ("-original-asked" if query else ""))
        assert pngs[0] == pngs[1], "a viewer asking for the original pixels got other pixels"
        visit("/items/?kind=study&patient=&state=failed", "worklist-filtered")
        visit("/items/?kind=study&name=Brightwater", "worklist-name-search-refused")
        assert "may not search by name" in page.locator("ul.messages").inner_text()
        for path, what in (("/config/", "config"), ("/webhooks/", "webhooks"), ("/audit/", "audit")):
            visit(path, f"{what}-forbidden", status=403)
            assert "Not allowed" in page.locator("h1").inner_text()
        assert shots.problems == [], shots.problems
    finally:
        context.close()


def test_pages_with_script_run_under_the_csp_and_the_headers_are_there(browser, console):
    """The API's Swagger UI (the one page with JavaScript) works under the CSP; a page that breaks
    the policy is reported (the watch itself works); every response carries the headers."""
    context, page, shots = _session(browser, console, "olga", "operator-csp")
    try:
        headers = page.goto("/api/docs").headers  # type: ignore[union-attr]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        page.locator(".swagger-ui .info .title").wait_for()
        assert "fhirai" in page.locator(".swagger-ui .info .title").inner_text().lower()
        page.locator(".opblock-summary-path", has_text="/api/studies").first.wait_for()
        shots("api-docs")
        for path in (
            "/",
            "/items/?kind=study",
            f"/items/study/{console.study_id}/",
            "/config/",
            "/webhooks/",
        ):
            _ok(page.goto(path))
        assert shots.problems == [], shots.problems
        # The watch reports a violation: an inline script added to a console page is refused.
        page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
            " document.body.appendChild(s); }"
        )
        page.wait_for_timeout(300)
        assert page.evaluate("() => window.ran") is None
        assert any("script-src" in p for p in shots.problems), shots.problems
    finally:
        context.close()
