"""What a person and a client author see, against the real service under gunicorn on a small pipeline run.

- The page in a real headless Chromium (Debian's ``chromium`` driven through ``chromedriver`` by
  Selenium): it loads, a user's history and list appear with reasons, the request's versions and step
  timings show; a screenshot is kept; a title with markup renders as text and runs nothing; the API's
  error message is shown (never a stack trace); a new user likes a film and the list changes.
- The API fuzzed from its OpenAPI document (``schemathesis``): bounded positive and negative cases per
  operation, each answered in time, never 5xx, always as the document says.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from data_exchange_center import online_layout as L
from data_exchange_center.item_catalog import CATALOG_FILE
from data_exchange_center.paths import ArtifactPaths
from scripts.native_servers import free_port
from tests.pipeline_support import EMBEDDED_PUBLISH, copy_run, run_stages

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--window-size=1400,1000",
)  # fmt: skip
XSS_TITLE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
def data_dir(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pipeline run whose most popular item's published title is markup."""
    folder = copy_run(synthetic_run, tmp_path_factory.mktemp("page") / "run")
    paths = ArtifactPaths.from_env(folder)
    most_popular = int(pd.read_parquet(paths.popularity_path).sort_values("score").iloc[-1]["itemid"])
    items = pd.read_parquet(paths.items_path)
    items.loc[items["itemid"] == most_popular, "title"] = XSS_TITLE + " (1999)"
    items.to_parquet(paths.items_path, index=False)  # item data, before it is published
    run_stages(EMBEDDED_PUBLISH, folder)
    catalog = pd.read_parquet(L.current_version_dir(L.items_store_dir(paths)) / CATALOG_FILE)
    assert XSS_TITLE in catalog["title"].tolist()  # published as item data
    return folder


@pytest.fixture(scope="module")
def server_url(data_dir: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {"RECSYS_DATA_DIR": str(data_dir), "RECSYS_PROFILE": "embedded", "RECSYS_LOG_LEVEL": "WARNING"}
    url = f"http://127.0.0.1:{port}"
    with (data_dir / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
             "--timeout", "120", "online.main.s1_server:create_app()"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_ready(url, proc, data_dir / "server.log")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited:\n{log_path.read_text()[-3000:]}"
        try:
            if requests.get(url + "/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not ready after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


# -- the page in a real browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(binary), f"{binary} is missing: apt-get install -y chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, timeout_s: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)


def rec_rows(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#recs tbody tr")


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("page-screenshots")


def test_the_page_shows_a_users_history_list_reasons_and_timings(
    browser: Any, server_url: str, artifacts_dir: Path
) -> None:
    browser.get(server_url + "/?user=1")
    wait_for(browser, lambda d: len(rec_rows(d)) > 0)
    rows = rec_rows(browser)
    assert len(rows) == 20  # the page asks for 20
    body = requests.post(server_url + "/ml/rec", json={"userid": 1, "size": 20, "explain": True}, timeout=10).json()
    first = body["item_list"][0]
    cells = rows[0].find_elements("css selector", "td")
    assert cells[1].text.startswith(first["title"]) and cells[4].text == first["reason"]["channel"]
    assert first["reason"]["summary"] in cells[5].text  # the reason, in words
    assert "Because you rated" in text_of(browser, "recs") or "Matches your genres" in text_of(browser, "recs")
    history = requests.get(server_url + "/ml/users/1/history", timeout=10).json()
    wait_for(browser, lambda d: history["items"][0]["title"] in text_of(d, "history"))
    info = text_of(browser, "request-info")
    for part in ("version items", "version model", "fetch_user_profile", "recall_candidates", "score", " ms"):
        assert part in info
    screenshot = artifacts_dir / "page-user-1.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_markup_in_a_title_renders_as_text_and_runs_nothing(browser: Any, server_url: str, artifacts_dir: Path) -> None:
    browser.get(server_url + "/?user=987654321")  # unknown: the popular items, the markup title first
    wait_for(browser, lambda d: len(rec_rows(d)) > 0)
    wait_for(browser, lambda d: XSS_TITLE in text_of(d, "search-results"))
    assert XSS_TITLE in text_of(browser, "recs")
    assert browser.execute_script("return window.__xss === undefined")
    assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    browser.save_screenshot(str(artifacts_dir / "page-markup-title.png"))


def test_the_page_shows_the_apis_error_message(browser: Any, server_url: str) -> None:
    browser.get(server_url + "/")
    browser.execute_script("document.getElementById('size').value = '999'")
    browser.find_element("id", "userid").send_keys("1")
    browser.find_element("css selector", "#user-form button[type=submit]").click()
    wait_for(browser, lambda d: d.find_element("id", "error").is_displayed())
    message = text_of(browser, "error")
    api = requests.post(server_url + "/ml/rec", json={"userid": 1, "size": 999, "explain": True}, timeout=10)
    assert api.status_code == 422 and message == api.json()["error"]["message"]
    assert "Traceback" not in browser.page_source and "Error:" not in message


def test_a_new_user_likes_films_and_the_list_changes(browser: Any, server_url: str, artifacts_dir: Path) -> None:
    browser.get(server_url + "/?user=1234567890123")
    wait_for(browser, lambda d: len(rec_rows(d)) > 0)
    before = [r.get_attribute("data-itemid") for r in rec_rows(browser)]
    assert "unknown user" in text_of(browser, "history-count")
    browser.find_element("id", "search").send_keys("Synthetic Movie 1")
    browser.find_element("css selector", "#search-form button").click()
    wait_for(browser, lambda d: "Synthetic Movie 1" in text_of(d, "search-results"))
    liked = []
    for position in range(3):
        buttons = browser.find_elements("css selector", "#search-results button.rate")
        liked.append(buttons[position].find_element("xpath", "..").text.replace("I like it", "").strip())
        buttons[position].click()
        wait_for(browser, lambda d, n=position + 1: len(d.find_elements("css selector", "#history li.liked")) == n)
    history = text_of(browser, "history")
    assert all(title in history for title in liked), (liked, history)
    wait_for(browser, lambda d: [r.get_attribute("data-itemid") for r in rec_rows(d)] != before)
    assert not browser.find_element("id", "error").is_displayed()
    browser.save_screenshot(str(artifacts_dir / "page-new-user.png"))


# -- the API fuzzed from its OpenAPI document ----------------------------------------------------------
MAX_EXAMPLES = 40  # per operation and mode: about 400 requests in all
MAX_SECONDS = 5.0  # one answer slower than this counts as a hang


def fuzz_operation(operation: Any, mode: Any, url: str, session: requests.Session, failures: list[str]) -> int:
    """Send ``MAX_EXAMPLES`` generated cases of one operation; failed checks go to ``failures``."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    # Every check of the response against the document; not ``positive_data_acceptance``: JSON Schema
    # cannot tell 12 from 12.0 and the service refuses 12.0 for an integer on purpose (the unit test
    # test_the_schema_and_the_validation_agree checks the two agree on everything else).
    response_checks = [checks.not_a_server_error, checks.response_schema_conformance, checks.status_code_conformance,
                       checks.content_type_conformance, checks.response_headers_conformance,
                       checks.negative_data_rejection]  # fmt: skip
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def send(case: Any) -> None:
        nonlocal sent
        sent += 1
        started = time.monotonic()
        response = case.call(base_url=url, session=session, timeout=MAX_SECONDS * 2)
        elapsed = time.monotonic() - started
        label = f"{mode.value} {case.method} {case.formatted_path} query={case.query} -> {response.status_code}"
        if elapsed > MAX_SECONDS:
            failures.append(f"{label}: answered in {elapsed:.1f} s")
        try:
            case.validate_response(response, checks=response_checks)
        except BaseException as exc:  # schemathesis raises a BaseExceptionGroup of failed checks
            failures.append(f"{label}: {str(exc)[:400]}")

    send()
    return sent


def test_the_api_survives_fuzzing_from_its_openapi_document(server_url: str) -> None:
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(requests.get(server_url + "/openapi.json", timeout=10).json())
    session = requests.Session()
    failures: list[str] = []
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "POST" and operation.path == "/ml/events":
            continue  # writes to the event log: its own tests cover it
        modes = [GenerationMode.POSITIVE]
        if operation.body or operation.path_parameters or operation.query:
            modes.append(GenerationMode.NEGATIVE)  # an operation without inputs has no invalid request
        for mode in modes:
            sent[f"{mode.value} {operation.label}"] = fuzz_operation(operation, mode, server_url, session, failures)
    assert sent["negative POST /ml/rec"] >= MAX_EXAMPLES // 2 and sum(sent.values()) >= 200, sent
    assert not failures, f"{len(failures)} failed of {sum(sent.values())}:\n" + "\n".join(failures[:10])
