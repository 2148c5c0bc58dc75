"""The site's pages: login, the overview, static assets served by the ASGI application."""

from __future__ import annotations

import pytest

from aitbc_site.testing import asgi_request
from chain.tests.support import transfer

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db


def test_login_page_logs_in_and_logout_needs_a_post(client, user) -> None:
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and 'name="csrfmiddlewaretoken"' in page.content.decode()
    answer = client.post("/accounts/login/", {"username": "carol", "password": "a long password 1"})
    assert answer.status_code == 302 and answer["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/")["Location"] == "/accounts/login/"
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("path", ["/", "/explorer/", "/wallet/", "/market/", "/automation/"])
def test_every_page_needs_a_login_and_has_the_nav(client, user, node, path: str) -> None:
    assert client.get(path)["Location"].startswith("/accounts/login/")
    client.force_login(user)
    page = client.get(path).content.decode()
    for link in ('href="/"', 'href="/explorer/"', 'href="/wallet/"', 'href="/market/"', 'href="/automation/"'):
        assert link in page
    assert 'href="/api/docs/"' in page and "/static/aitbc/live.js" in page


def test_the_overview_shows_the_chain_the_charts_and_the_market(browser, node) -> None:
    alice, bob = node.keys.funded[0], node.keys.funded[1]
    node.submit(transfer(alice, 0, bob.address, 10))
    pending = browser.get("/?fragment=chain").content.decode()
    assert 'id="mempool-size">1<' in pending
    block = node.produce()
    page = browser.get("/").content.decode()
    assert f'href="/explorer/blocks/{block.height}">{block.height}<' in page
    assert 'id="mempool-size">0<' in page
    assert node.keys.validator.address in page and "active" in page
    assert "<polyline" in page, "the charts are drawn"
    assert 'id="providers-online">0<' in page
    assert browser.get("/?fragment=nope").status_code == 404


def test_admin_link_is_for_staff_only(browser, user) -> None:
    assert 'href="/admin/"' not in browser.get("/automation/").content.decode()
    user.is_staff = True
    user.save()
    assert 'href="/admin/"' in browser.get("/automation/").content.decode()


async def _get(path: str) -> tuple[int, bytes]:
    status, _headers, body = await asgi_request("GET", path)
    return status, body


@pytest.mark.parametrize(
    "path",
    [
        "/static/aitbc/live.js",
        "/static/aitbc/site.css",
        "/static/marketplace/market.js",
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
    ],
)
def test_static_assets_are_served_by_the_application_without_collectstatic(path: str) -> None:
    from asgiref.sync import async_to_sync

    status, body = async_to_sync(_get)(path)
    assert status == 200 and len(body) > 100
