"""CSRF: every form and every session-authenticated write needs the token; bearer-authenticated ones do not.

The routes come from the authorization table (``test_authorization.ACCESS``): each POST a
session can make is refused without the token (403) and reaches its view with it. The
forms are then filled in for real with the token; and the gateway, the providers' API and
the webhook, which take no cookie, work without one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from aitbc_site.tests.test_authorization import (
    ACCESS,
    LOGIN_PAGE,
    OWNER,
    OWNER_SESSION,
    OWNER_WRITE,
    PAID_BY_ESCROW,
    SESSION,
    STAFF,
)
from marketplace.gateway.models import ApiKey
from marketplace.models import Deposit, Provider
from marketplace.services.providers import hash_token
from wallet import keystore, services
from wallet.models import Wallet
from wallet.tests.support import FAST_KDF

PASSWORD = "correct horse battery"
USER_PASSWORD = "a long password 1"
# Who a cookie can speak for: every one of their POSTs must carry the token.
SESSION_ROLES = {SESSION, OWNER, OWNER_WRITE, OWNER_SESSION, PAID_BY_ESCROW, LOGIN_PAGE, STAFF}
SESSION_POSTS = sorted(
    route for route, methods in ACCESS.items() if methods.get("POST") in SESSION_ROLES and route != "admin/…"
)


@pytest.fixture
def setting(db, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keystore, "WRITE_PARAMS", FAST_KDF)
    monkeypatch.delenv("AITBC_NODE_URL", raising=False)
    settings.DATA_DIR = tmp_path
    settings.FAUCET_KEYSTORE = tmp_path / "no-faucet.keystore.json"


@pytest.fixture
def user(setting, django_user_model):
    return django_user_model.objects.create_superuser("carol", password=USER_PASSWORD)


@pytest.fixture
def wallet(user) -> Wallet:
    return services.wallet_create(owner=user, name="main", password=PASSWORD).wallet


@pytest.fixture
def strict(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token(client: Client) -> str:
    """The CSRF token a page of the dashboard hands this client (its cookie)."""
    assert client.get(reverse("login")).status_code == 200
    return client.cookies["csrftoken"].value


def csrf_refused(response) -> bool:
    return response.status_code == 403 and b"CSRF" in response.content


def path_of(route: str, wallet: Wallet) -> str:
    values = {"address": wallet.address, "job_id": "job_nothere", "deposit_id": "dep_nothere", "key_id": "1"}
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], route)


@pytest.mark.parametrize("route", SESSION_POSTS)
def test_a_session_post_needs_the_csrf_token(strict: Client, wallet: Wallet, route: str) -> None:
    path = path_of(route, wallet)
    form = {"name": "x", "password": PASSWORD, "password2": PASSWORD, "to": wallet.address, "amount": "1"}
    as_json = route.startswith("v1/")
    data = json.dumps({}) if as_json else urlencode(form)
    content_type = "application/json" if as_json else "application/x-www-form-urlencoded"
    without = strict.post(path, data=data, content_type=content_type)
    assert csrf_refused(without), (path, without.status_code, without.content[:300])
    token = csrf_token(strict)
    if as_json:
        with_token = strict.post(path, data=data, content_type=content_type, HTTP_X_CSRFTOKEN=token)
    else:
        with_token = strict.post(path, data=f"{data}&csrfmiddlewaretoken={token}", content_type=content_type)
    assert not csrf_refused(with_token), (path, with_token.status_code, with_token.content[:300])


def test_the_wallet_forms_work_with_the_token(strict: Client, wallet: Wallet) -> None:
    token = csrf_token(strict)
    created = strict.post(
        "/wallet/create", {"name": "second", "password": PASSWORD, "password2": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert created.status_code == 200 and 'id="mnemonic"' in created.content.decode()
    mnemonic = re.search(r'id="mnemonic">([a-z ]+)<', created.content.decode()).group(1)
    Wallet.objects.filter(name="second").delete()
    imported = strict.post(
        "/wallet/import", {"name": "again", "mnemonic": mnemonic, "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert imported.status_code == 302 and Wallet.objects.filter(name="again").exists()
    # No node here: the send and the faucet reach their views and report that on the page.
    sent = strict.post(
        f"/wallet/{wallet.address}/send",
        {"to": wallet.address, "amount": "1", "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert sent.status_code == 302 and sent["Location"].startswith(f"/wallet/{wallet.address}")
    faucet = strict.post(f"/wallet/{wallet.address}/faucet", {"csrfmiddlewaretoken": token})
    assert faucet.status_code == 302 and faucet["Location"].startswith(f"/wallet/{wallet.address}")


def test_the_keys_page_creates_and_revokes_with_the_token(strict: Client, user) -> None:
    Deposit.objects.create(
        owner=user, payer="ait1payer", escrow_id="e" * 64, amount=10**6, timeout_height=10**6, state=Deposit.OPEN
    )
    assert strict.post("/market/keys/", {"name": "laptop"}).status_code == 403
    token = csrf_token(strict)
    created = strict.post("/market/keys/", {"name": "laptop", "csrfmiddlewaretoken": token})
    assert created.status_code == 200 and "aitbc_" in created.content.decode()
    key = ApiKey.objects.get()
    assert strict.post("/market/keys/", {"action": "revoke", "key": key.pk}).status_code == 403
    revoked = strict.post("/market/keys/", {"action": "revoke", "key": key.pk, "csrfmiddlewaretoken": token})
    assert revoked.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_login_and_logout_need_the_token(user) -> None:
    client = Client(enforce_csrf_checks=True)
    credentials = {"username": "carol", "password": USER_PASSWORD}
    assert client.post(reverse("login"), credentials).status_code == 403
    assert SESSION_KEY not in client.session
    token = csrf_token(client)
    assert client.post(reverse("login"), credentials | {"csrfmiddlewaretoken": token}).status_code == 302
    assert SESSION_KEY in client.session
    # Logging in rotates the token: a forged logout with none (or the old one) does nothing.
    assert client.post(reverse("logout")).status_code == 403
    assert SESSION_KEY in client.session
    token = csrf_token(client)
    assert client.post(reverse("logout"), {"csrfmiddlewaretoken": token}).status_code == 302
    assert SESSION_KEY not in client.session


def test_the_admin_needs_the_token(strict: Client, django_user_model) -> None:
    new_user = {"username": "dave", "password1": "an admin made this 1", "password2": "an admin made this 1"}
    add = reverse("admin:auth_user_add")
    assert strict.post(add, new_user).status_code == 403
    assert not django_user_model.objects.filter(username="dave").exists()
    token = csrf_token(strict)
    assert strict.post(add, new_user | {"csrfmiddlewaretoken": token}).status_code == 302
    assert django_user_model.objects.filter(username="dave").exists()
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post(reverse("admin:login"), {"username": "carol", "password": USER_PASSWORD}).status_code == 403


def test_the_rest_api_with_a_session_needs_the_token(strict: Client) -> None:
    body = json.dumps({"name": "api", "password": PASSWORD})
    refused = strict.post("/v1/wallets", data=body, content_type="application/json")
    assert csrf_refused(refused) and not Wallet.objects.filter(name="api").exists()
    token = csrf_token(strict)
    created = strict.post("/v1/wallets", data=body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert created.status_code == 201
    assert strict.post("/v1/system/ping", HTTP_X_CSRFTOKEN=token).status_code == 202
    # Reads never need it.
    assert strict.get("/v1/wallets").status_code == 200


def test_provider_tokens_need_no_csrf_token(setting) -> None:
    Provider.objects.create(
        address="ait1provider",
        pubkey="00" * 32,
        name="p",
        token_hash=hash_token("provider-token"),
        first_registered_at=timezone.now(),
        registered_at=timezone.now(),
    )
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION="Bearer provider-token")
    beat = client.post("/v1/providers/heartbeat", data=json.dumps({"active": 0}), content_type="application/json")
    assert beat.status_code == 200, beat.content
    assert Provider.objects.get().online


@pytest.mark.django_db(transaction=True)
def test_api_keys_need_no_csrf_token(settings, tmp_path: Path, django_user_model) -> None:
    from marketplace.gateway import keys

    settings.DATA_DIR = tmp_path
    owner = django_user_model.objects.create_user("erin")
    Deposit.objects.create(
        owner=owner, payer="ait1payer", escrow_id="f" * 64, amount=10**6, timeout_height=10**6, state=Deposit.OPEN
    )
    secret = keys.apikey_create(owner=owner).secret
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = json.dumps({"model": "nobody:offers-this", "messages": [{"role": "user", "content": "Hi"}]})
    for path in ("/api/chat", "/v1/chat/completions"):
        answer = client.post(path, data=body, content_type="application/json")
        # Past authentication to the model lookup: no offer, so 404, never a CSRF 403.
        assert answer.status_code == 404, (path, answer.content)
    assert client.get("/v1/deposits").status_code == 200
