"""The dashboard in a real headless Chromium against a live devnet.

Log in, create wallets, get faucet funds, send a transfer and watch it confirm live,
ask the devnet's provider (SmolLM2, the real model) and watch the answer stream in,
find the transfer's block through the search box; every page answers without errors
in the browser's console, and ``/metrics`` moves with the blocks and jobs. Screenshots
go to ``test-artifacts/`` (and to ``docs/screenshots/`` with AITBC_UPDATE_SCREENSHOTS=1).

Chromium is Debian's (``/usr/bin/chromium``, installed by ``scripts/setup.sh``), driven
by Playwright without any browser download of its own.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import PROJECT_ROOT, Spawned, clean_env, manage_argv, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
DOC_SHOTS = PROJECT_ROOT / "docs" / "screenshots"
PASSWORD = "browser test password"
PORT_BLOCK = 21
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.process


def metrics(base_url: str) -> dict[tuple[str, tuple], float]:
    answer = requests.get(f"{base_url}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One devnet (a validator, the coordinator with the dashboard, a provider) for the module."""
    import conftest

    data_dir = tmp_path_factory.mktemp("browser") / "data"
    port = conftest.find_free_port_range(PORT_BLOCK)
    log_path = data_dir.parent / "devnet.log"
    import subprocess

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            manage_argv("devnet", "--port", str(port)),
            cwd=PROJECT_ROOT,
            env=clean_env(AITBC_DATA_DIR=data_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    spawned = Spawned(process, log_path)
    network_file = data_dir / "devnet" / "network.json"
    try:

        def up() -> dict | None:
            spawned.assert_running()
            if not network_file.exists():
                return None
            return json.loads(network_file.read_text())

        network = wait_until(up, timeout=180, interval=0.3, message="the devnet's network.json")
        network["data_dir"] = str(data_dir)
        yield network
    finally:
        conftest._stop_spawned(spawned, timeout=30)


@pytest.fixture(scope="module")
def page(devnet: dict) -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium for the tests")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.new_page()
        tab.console_problems = []
        tab.on(
            "console",
            lambda m: tab.console_problems.append(f"{m.type}: {m.text} ({tab.url})") if m.type == "error" else None,
        )
        tab.on("pageerror", lambda e: tab.console_problems.append(f"page error: {e} ({tab.url})"))
        tab.base_url = devnet["dashboard_url"]
        try:
            yield tab
        finally:
            tab.screenshot(path=str(ARTIFACTS / "last.png"), full_page=True)
            browser.close()


def shot(page, name: str, *, doc: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if doc and os.environ.get("AITBC_UPDATE_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOC_SHOTS / f"{name}.png"), full_page=False)


def goto(page, path: str) -> None:
    answer = page.goto(page.base_url + path)
    assert answer is not None and answer.status == 200, f"{path}: {answer and answer.status}"
    page.wait_for_selector('#live-status[data-state="open"]')


def create_wallet(page, name: str) -> str:
    goto(page, "/wallet/")
    form = page.locator("#create-wallet")
    form.locator("input[name=name]").fill(name)
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("input[name=password2]").fill(PASSWORD)
    form.locator("button[type=submit]").click()
    address = page.locator("#new-address").inner_text(timeout=TIMEOUT_MS)
    assert len(page.locator("#mnemonic").inner_text().split()) == 24
    return address


def test_the_dashboard_end_to_end_in_chromium(devnet: dict, page) -> None:
    started = time.monotonic()
    base = devnet["dashboard_url"]
    before = metrics(base)

    # Log in.
    page.goto(base + "/")
    assert "/accounts/login/" in page.url
    shot(page, "login")
    page.fill("input[name=username]", devnet["admin"]["username"])
    page.fill("input[name=password]", Path(devnet["admin"]["password_file"]).read_text().strip())
    page.click("button[type=submit]")
    page.wait_for_selector('#live-status[data-state="open"]')
    assert page.url.rstrip("/") == base

    # Blocks arrive live on the overview: the height in the nav moves without a reload.
    page.evaluate("window.__notReloaded = true")
    first = page.locator("#live-height").inner_text()
    page.wait_for_function("h => document.getElementById('live-height').textContent !== h", arg=first)
    page.wait_for_function("() => window.__notReloaded === true")
    page.wait_for_selector("#overview-charts polyline")
    shot(page, "overview", doc=True)

    # Create two wallets; the faucet funds the first, live.
    bob = create_wallet(page, "bob")
    alice = create_wallet(page, "alice")
    page.click("#open-wallet")
    page.wait_for_selector('#live-status[data-state="open"]')
    page.click("#faucet-form button")
    page.wait_for_selector("#wallet-balance")
    page.evaluate("window.__notReloaded = true")
    page.wait_for_function("() => document.getElementById('wallet-balance').textContent.trim() === '10000000'")
    assert page.evaluate("window.__notReloaded") is True, "the balance came without a reload"

    # Send 1.5 AIT to bob with the password, and see it confirmed live.
    form = page.locator("#send-form")
    form.locator("input[name=to]").fill(bob)
    form.locator("input[name=amount]").fill("1.5")
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"\?sent=[0-9a-f]{64}$"))
    tx_id = page.url.rsplit("=", 1)[1]
    page.wait_for_selector('#live-status[data-state="open"]')
    page.evaluate("window.__notReloaded = true")
    page.wait_for_selector(f'tr[data-tx="{tx_id}"] .badge.committed')
    assert page.evaluate("window.__notReloaded") is True, "the confirmation came without a reload"
    page.wait_for_function("() => document.getElementById('wallet-balance').textContent.trim() === '8499000'")
    shot(page, "wallet", doc=True)

    # Find the transfer's block through the search box.
    page.fill("#search-box", tx_id)
    page.press("#search-box", "Enter")
    page.wait_for_url(f"**/explorer/tx/{tx_id}")
    assert page.locator("#tx-status").inner_text() == "committed"
    page.click("#tx-block a")
    page.wait_for_url(re.compile(r"/explorer/blocks/\d+$"))
    assert tx_id in page.content()
    height = int(page.url.rsplit("/", 1)[1])
    page.fill("#search-box", str(height))
    page.press("#search-box", "Enter")
    page.wait_for_url(f"**/explorer/blocks/{height}")
    page.fill("#search-box", alice)
    page.press("#search-box", "Enter")
    page.wait_for_url(f"**/explorer/accounts/{alice}")
    goto(page, "/explorer/")
    shot(page, "explorer", doc=True)

    # Ask the devnet's provider and watch the answer stream in.
    assert devnet["providers"], "the devnet started no provider, so no model can answer (network.json has no providers)"
    goto(page, "/market/")
    page.wait_for_selector("#job-model option[value]", state="attached")
    page.select_option("#job-payment", f"wallet:{alice}")
    page.fill("#job-password", PASSWORD)
    page.fill("#job-prompt", "Name three colours of the sea.")
    page.evaluate(
        """() => { window.__chunks = 0; window.__streamLengths = [];
        window.aitbc.on('job.chunk', () => { window.__chunks += 1;
          window.__streamLengths.push(document.getElementById('job-stream').textContent.length); }); }"""
    )
    page.click("#job-submit")
    page.wait_for_selector("#job-link")
    job_id = page.locator("#job-link").inner_text()
    page.wait_for_function("() => window.__chunks > 0", timeout=120_000)
    page.wait_for_selector("#job-result #job-state", timeout=120_000)
    page.wait_for_function(
        "() => ['completed', 'settled'].includes(document.querySelector('#job-result #job-state').textContent.trim())"
    )
    answer = page.locator("#job-stream").inner_text()
    assert answer.strip(), "the model's answer streamed into the page"
    assert page.evaluate("window.__chunks") >= 1
    shot(page, "marketplace", doc=True)
    goto(page, f"/market/jobs/{job_id}")
    page.wait_for_selector("#job-output")
    assert page.locator("#job-output").inner_text().strip() == answer.strip()
    page.wait_for_selector("#job-receipt", timeout=TIMEOUT_MS)
    shot(page, "job", doc=True)

    goto(page, "/automation/")
    shot(page, "automation", doc=True)
    page.goto(base + "/api/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=TIMEOUT_MS)
    shot(page, "api-docs", doc=True)

    assert page.console_problems == [], "errors in the browser console:\n" + "\n".join(page.console_problems)

    # The metrics moved with the blocks and the job.
    after = metrics(base)
    assert after[("aitbc_chain_height", ())] > before[("aitbc_chain_height", ())]
    finished = sum(after.get(("aitbc_jobs", (("state", s),)), 0) for s in ("completed", "settled"))
    assert finished >= 1
    assert after[("aitbc_dispatch_latency_seconds_count", ())] >= 1
    watch = ("aitbc_celery_tasks_total", (("outcome", "success"), ("task", "chain.watch_head")))
    assert after.get(watch, 0) > before.get(watch, 0)
    print(f"browser walk-through took {time.monotonic() - started:.0f}s")


def test_pages_without_login_lead_to_the_login_form(devnet: dict, page) -> None:
    for path in ("/explorer/", "/wallet/", "/market/", "/automation/"):
        page.context.clear_cookies()
        page.goto(devnet["dashboard_url"] + path)
        assert "/accounts/login/" in page.url, path
