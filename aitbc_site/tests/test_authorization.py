"""Who may call what: every route and websocket classified, and each refused for the wrong caller.

``ACCESS`` is the authorization table of ``docs/security.md`` in code. The tests fail
when the URLconf or the websocket routing gains a route the table does not classify,
when a DRF view gains a method the table does not list, and when the document and the
table disagree; then every non-public (route, method) is called anonymously and must
be refused. The marketplace's wrong-caller tests (another user's jobs, deposits, keys
and receipts, another provider, revoked keys, keys without the right) are in
``marketplace/tests/test_authorization.py``; the wallet's and the admin's are here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib import admin
from django.core.cache import cache
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.views import APIView

from aitbc_site import routing
from aitbc_site.events import EVENTS_GROUP, send_event, user_group
from aitbc_site.tests.test_consumers import RECEIVE_TIMEOUT, close_layer, events_socket, in_memory_layer, session_cookie
from wallet import keystore, services
from wallet.tests.support import FAST_KDF

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"

# Who may call: the words of docs/security.md's table.
PUBLIC = "public"
LOGIN_PAGE = "public (the login form)"
SESSION = "session user"
OWNER = "owner"
OWNER_OR_TOKEN = "owner (session or API key), staff, job token"
OWNER_WRITE = "owner (session), staff, job token"
OWNER_SESSION = "owner (session), staff"
OWNER_OR_KEY_STAFF = "owner (session or API key), staff"
SESSION_OR_KEY = "session user or API key"
PAID_BY_ESCROW = "public (escrow_tx) or session user"
STAFF = "staff"
API_KEY = "API key"
PROVIDER_SIGNATURE = "provider signature"
PROVIDER_TOKEN = "provider token"
ASSIGNED_PROVIDER = "provider token, assigned provider"
WEBHOOK = "HMAC webhook"
METRICS = "loopback or metrics token"
TEST_HOOK = "test hook"
SIGNED_HELLO = "provider signature (signed hello)"
SAME_ORIGIN_SESSION = "session user, same origin"
PEER = "any peer; consensus messages only from validators"

# Every HTTP route (as the URLconf spells it) and every method it answers, with who may call.
# The admin's routes are one entry: Django's admin sends anyone not staff to its login page.
ACCESS: dict[str, dict[str, str]] = {
    "health": {"GET": PUBLIC},
    "metrics": {"GET": METRICS},
    "admin/login/": {"GET": LOGIN_PAGE, "POST": LOGIN_PAGE},
    "admin/…": {"GET": STAFF, "POST": STAFF},
    "api/schema/": {"GET": PUBLIC},
    "api/docs/": {"GET": PUBLIC},
    "v1/system/ping": {"POST": SESSION},
    # The dashboard (server-rendered pages behind the login).
    "": {"GET": SESSION},
    "search": {"GET": SESSION},
    "accounts/login/": {"GET": LOGIN_PAGE, "POST": LOGIN_PAGE},
    "accounts/logout/": {"POST": SESSION},
    "explorer/": {"GET": SESSION},
    "explorer/blocks/<int:height>": {"GET": SESSION},
    "explorer/tx/<str:tx_id>": {"GET": SESSION},
    "explorer/accounts/<str:address>": {"GET": SESSION},
    "explorer/escrows/<str:escrow_id>": {"GET": SESSION},
    "wallet/": {"GET": SESSION},
    "wallet/create": {"POST": SESSION},
    "wallet/import": {"POST": SESSION},
    "wallet/<str:address>": {"GET": OWNER},
    "wallet/<str:address>/send": {"POST": OWNER},
    "wallet/<str:address>/faucet": {"POST": OWNER},
    "market/": {"GET": SESSION},
    "market/jobs/<str:job_id>": {"GET": OWNER_SESSION},
    "market/keys/": {"GET": SESSION, "POST": SESSION},
    "automation/": {"GET": SESSION},
    # The automation's API.
    "v1/automation/summary": {"GET": SESSION},
    "v1/automation/webhook": {"POST": WEBHOOK},
    # The node's RPC and explorer reads: public; transactions carry their own signatures.
    "status": {"GET": PUBLIC},
    "v1/chain/transactions": {"POST": PUBLIC},
    "v1/chain/transactions/batch": {"POST": PUBLIC},
    "v1/chain/transactions/<str:tx_id>": {"GET": PUBLIC},
    "v1/chain/accounts/<str:address>": {"GET": PUBLIC},
    "v1/chain/escrows/<str:escrow_id>": {"GET": PUBLIC},
    "v1/chain/blocks": {"GET": PUBLIC},
    "v1/chain/blocks/<height:height>": {"GET": PUBLIC},
    "v1/chain/explorer/transactions": {"GET": PUBLIC},
    "v1/chain/explorer/accounts/<str:address>/transactions": {"GET": PUBLIC},
    "v1/chain/explorer/escrows": {"GET": PUBLIC},
    "v1/chain/explorer/stats": {"GET": PUBLIC},
    "v1/chain/explorer/search": {"GET": PUBLIC},
    "v1/test/partition": {"POST": TEST_HOOK},
    # The wallet's API.
    "v1/faucet": {"POST": SESSION},
    "v1/wallets": {"GET": SESSION, "POST": SESSION},
    "v1/wallets/import": {"POST": SESSION},
    "v1/wallets/<str:address>": {"GET": OWNER},
    "v1/wallets/<str:address>/send": {"POST": OWNER},
    # The marketplace's API.
    "v1/coordinator": {"GET": PUBLIC},
    "v1/providers": {"GET": PUBLIC},
    "v1/offers": {"GET": PUBLIC},
    "v1/providers/register": {"POST": PROVIDER_SIGNATURE},
    "v1/providers/poll": {"POST": PROVIDER_TOKEN},
    "v1/providers/heartbeat": {"POST": PROVIDER_TOKEN},
    "v1/providers/jobs/<str:job_id>/events": {"POST": ASSIGNED_PROVIDER},
    "v1/jobs": {"GET": SESSION_OR_KEY, "POST": PAID_BY_ESCROW},
    "v1/jobs/<str:job_id>": {"GET": OWNER_OR_TOKEN},
    "v1/jobs/<str:job_id>/cancel": {"POST": OWNER_WRITE},
    "v1/jobs/<str:job_id>/receipt": {"GET": OWNER_OR_TOKEN},
    "v1/jobs/<str:job_id>/reject": {"POST": OWNER_WRITE},
    "v1/deposits": {"GET": SESSION_OR_KEY, "POST": SESSION},
    "v1/deposits/<str:deposit_id>": {"GET": OWNER_OR_KEY_STAFF},
    "v1/deposits/<str:deposit_id>/close": {"POST": OWNER_SESSION},
    "v1/keys": {"GET": SESSION, "POST": SESSION},
    "v1/keys/<int:key_id>/revoke": {"POST": OWNER},
    # The gateway: Ollama's API at the root and under /k/<key>/, OpenAI's under /v1.
    "api/chat": {"POST": API_KEY},
    "api/generate": {"POST": API_KEY},
    "api/tags": {"GET": API_KEY},
    "api/show": {"POST": API_KEY},
    "api/version": {"GET": PUBLIC},
    "k/<str:key>/api/chat": {"POST": API_KEY},
    "k/<str:key>/api/generate": {"POST": API_KEY},
    "k/<str:key>/api/tags": {"GET": API_KEY},
    "k/<str:key>/api/show": {"POST": API_KEY},
    "k/<str:key>/api/version": {"GET": PUBLIC},
    "k/<str:key>/": {"GET": PUBLIC},
    "v1/chat/completions": {"POST": API_KEY},
    "v1/models": {"GET": API_KEY},
    "v1/models/<str:model_id>": {"GET": API_KEY},
}

WEBSOCKETS: dict[str, str] = {
    "ws/events/": SAME_ORIGIN_SESSION,
    "ws/provider/": SIGNED_HELLO,
    "p2p/": PEER,
}

# What an anonymous caller gets: the API's refusals, or the login page for a dashboard page.
LOGIN_REDIRECT = "login"
ADMIN_LOGIN_REDIRECT = "admin login"
API_REFUSAL = {401, 403}
ANONYMOUS_ANSWER: dict[str, set[int] | str] = {
    SESSION: API_REFUSAL,
    OWNER: API_REFUSAL,
    SESSION_OR_KEY: API_REFUSAL,
    OWNER_OR_KEY_STAFF: API_REFUSAL,
    OWNER_SESSION: API_REFUSAL,
    # Jobs answer the holder of their token: without one, a job is not found (nothing to probe).
    OWNER_OR_TOKEN: {404},
    OWNER_WRITE: {404},
    STAFF: ADMIN_LOGIN_REDIRECT,
    API_KEY: {401},
    PROVIDER_TOKEN: {401},
    ASSIGNED_PROVIDER: {401},
    # An unsigned registration is refused as malformed before any signature is checked.
    PROVIDER_SIGNATURE: {400, 401},
    WEBHOOK: {403},
    METRICS: {401},
    TEST_HOOK: {404},
}
API_PREFIXES = ("v1/", "api/", "k/", "admin", "status", "health", "metrics")
PATH_VALUES = {
    "height": "1",
    "tx_id": "0" * 64,
    "address": "ait1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq",
    "escrow_id": "0" * 64,
    "job_id": "job_nothere",
    "deposit_id": "dep_nothere",
    "key_id": "1",
    "key": "aitbc_not_a_real_key",
    "model_id": "smollm2:135m",
}


def url_routes() -> dict[str, object]:
    """Every route of the URLconf, the admin's folded into ``admin/…``, with its view."""

    def walk(patterns, prefix: str):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                assert isinstance(pattern, URLPattern)
                yield prefix + str(pattern.pattern), pattern.callback

    routes: dict[str, object] = {}
    for route, view in walk(get_resolver().url_patterns, ""):
        if route.startswith("admin/") and route != "admin/login/":
            route = "admin/…"
        routes.setdefault(route, view)
    return routes


def websocket_routes() -> set[str]:
    found = set()
    for name in dir(routing):
        if name.endswith("urlpatterns"):
            found |= {str(pattern.pattern) for pattern in getattr(routing, name)}
    return found


def path_for(route: str) -> str:
    def value(match: re.Match) -> str:
        return PATH_VALUES[match.group(2)]

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: value(m) if m.group(2) in PATH_VALUES else "x", route)


def doc_rows() -> set[tuple[str, str, str]]:
    """(route, method, who) of each row of docs/security.md's tables; ``WS`` for websockets."""
    rows = set()
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`/"):
            continue
        route = cells[0].strip("`")[1:]
        for method in cells[1].split(","):
            rows.add((route, method.strip(), cells[2]))
    return rows


def table_rows() -> set[tuple[str, str, str]]:
    rows = {(route, method, who) for route, methods in ACCESS.items() for method, who in methods.items()}
    return rows | {(route, "WS", who) for route, who in WEBSOCKETS.items()}


# -- the table covers everything -------------------------------------------------------------------


def test_every_route_of_the_urlconf_is_classified() -> None:
    routes = set(url_routes())
    unclassified = routes - set(ACCESS)
    assert not unclassified, f"routes missing from ACCESS and docs/security.md: {sorted(unclassified)}"
    assert not set(ACCESS) - routes, f"ACCESS lists routes that no longer exist: {sorted(set(ACCESS) - routes)}"


def test_every_websocket_route_is_classified() -> None:
    from aitbc_site.asgi import application

    assert websocket_routes() == set(WEBSOCKETS)
    # asgi.py routes exactly routing.py's lists: the two outside the origin check, then the rest behind it.
    outer = application.application_mapping["websocket"].routes
    assert len(outer) == len(routing.provider_websocket_urlpatterns) + len(routing.node_websocket_urlpatterns) + 1


def test_each_api_view_answers_exactly_the_methods_the_table_lists() -> None:
    for route, view in url_routes().items():
        cls = getattr(view, "cls", None)
        if cls is None or not issubclass(cls, APIView):
            continue
        methods = {m.upper() for m in cls.http_method_names if m not in ("options", "head") and hasattr(cls, m)}
        assert methods == set(ACCESS[route]), f"{route}: the view answers {sorted(methods)}"


def test_docs_security_md_holds_the_same_table() -> None:
    documented, expected = doc_rows(), table_rows()
    assert not expected - documented, f"missing from docs/security.md: {sorted(expected - documented)}"
    assert not documented - expected, f"docs/security.md disagrees with the code: {sorted(documented - expected)}"


# -- anonymous callers -----------------------------------------------------------------------------

PROTECTED = [
    (route, method)
    for route, methods in ACCESS.items()
    for method, who in methods.items()
    if route != "admin/…" and who not in (PUBLIC, LOGIN_PAGE, PAID_BY_ESCROW)
]


@pytest.fixture
def anonymous(db, settings, tmp_path: Path) -> Client:
    settings.DATA_DIR = tmp_path
    settings.METRICS_TOKEN = "metrics-token-for-the-test"
    cache.clear()
    # Not loopback: /metrics opens to loopback clients without a token.
    return Client(REMOTE_ADDR="203.0.113.7")


@pytest.mark.parametrize(("route", "method"), PROTECTED, ids=[f"{m} /{r}" for r, m in PROTECTED])
def test_an_anonymous_caller_is_refused(anonymous: Client, route: str, method: str) -> None:
    who = ACCESS[route][method]
    path = path_for(route)
    if method == "GET":
        response = anonymous.get(path)
    else:
        response = anonymous.post(path, data="{}", content_type="application/json")
    expected = ANONYMOUS_ANSWER[who] if route.startswith(API_PREFIXES) else LOGIN_REDIRECT
    if expected == LOGIN_REDIRECT:
        if route == "accounts/logout/":
            # Logging out when not logged in changes nothing: it only leads to the login page.
            assert response.status_code in (200, 302)
            return
        assert response.status_code == 302, (path, response.status_code)
        assert response["Location"].startswith(reverse("login")), response["Location"]
    else:
        assert response.status_code in expected, (path, response.status_code, response.content[:200])


PUBLIC_READS = [route for route, methods in ACCESS.items() if methods.get("GET") in (PUBLIC, LOGIN_PAGE)]


@pytest.mark.parametrize("route", PUBLIC_READS, ids=[f"GET /{r}" for r in PUBLIC_READS])
def test_public_reads_answer_an_anonymous_caller(anonymous: Client, route: str) -> None:
    response = anonymous.get(path_for(route))
    # Without a chain in the test database the node's reads are 503 or 404: never a login demand.
    assert response.status_code not in (301, 302, 401, 403), (route, response.status_code)


def test_metrics_open_to_loopback_or_the_token_only(anonymous: Client, settings) -> None:
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    # Through a proxy on the same host a client looks like loopback: forwarded requests need the token.
    for header in ({"HTTP_X_FORWARDED_FOR": "203.0.113.7"}, {"HTTP_FORWARDED": "for=203.0.113.7"}):
        proxied = Client(REMOTE_ADDR="127.0.0.1", **header)
        assert proxied.get("/metrics").status_code == 401
        assert proxied.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}").status_code == 200


def test_the_test_hook_is_not_found_without_test_hooks(anonymous: Client, settings) -> None:
    settings.TEST_HOOKS = False
    body = json.dumps({"block": ["node1"]})
    assert anonymous.post("/v1/test/partition", data=body, content_type="application/json").status_code == 404


# -- the admin -------------------------------------------------------------------------------------


def admin_pages() -> list[str]:
    pages = [reverse("admin:index")]
    for model in admin.site._registry:
        meta = model._meta
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"))
    return pages


def test_admin_pages_are_for_staff_only(db, django_user_model) -> None:
    pages = admin_pages()
    assert len(pages) > 10  # every app registers its models
    user = Client()
    user.force_login(django_user_model.objects.create_user("mallory", password="not staff at all 1"))
    anonymous = Client()
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("ops", password="staff password 1"))
    for page in pages:
        for client in (anonymous, user):
            refused = client.get(page)
            assert refused.status_code == 302 and refused["Location"].startswith(reverse("admin:login")), page
        # A superuser gets every page, except the add form of what may only be created elsewhere.
        assert staff.get(page).status_code in (200, 403), page
    posted = user.post(reverse("admin:auth_user_add"), {"username": "eve", "password1": "x", "password2": "x"})
    assert posted.status_code == 302 and not django_user_model.objects.filter(username="eve").exists()


def test_a_non_staff_user_cannot_log_in_to_the_admin(db, django_user_model) -> None:
    django_user_model.objects.create_user("mallory", password="not staff at all 1")
    client = Client()
    answer = client.post(reverse("admin:login"), {"username": "mallory", "password": "not staff at all 1"})
    assert answer.status_code == 200 and "_auth_user_id" not in client.session
    assert client.get(reverse("admin:index")).status_code == 302


# -- another user's wallets ------------------------------------------------------------------------

PASSWORD = "correct horse battery"


@pytest.fixture
def two_users(db, django_user_model, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(keystore, "WRITE_PARAMS", FAST_KDF)
    monkeypatch.delenv("AITBC_NODE_URL", raising=False)
    settings.DATA_DIR = tmp_path
    alice = django_user_model.objects.create_user("alice", password="alice password 1")
    bob = django_user_model.objects.create_user("bob", password="bob password 12")
    wallet = services.wallet_create(owner=alice, name="main", password=PASSWORD).wallet
    as_bob = Client()
    as_bob.force_login(bob)
    return wallet, as_bob


def test_another_users_wallet_cannot_be_read_or_spent_over_the_api(two_users) -> None:
    wallet, as_bob = two_users
    assert as_bob.get("/v1/wallets").json() == []
    assert as_bob.get(f"/v1/wallets/{wallet.address}").status_code == 404
    body = {"to": wallet.address, "amount": 1, "password": PASSWORD}
    sent = as_bob.post(f"/v1/wallets/{wallet.address}/send", data=json.dumps(body), content_type="application/json")
    assert sent.status_code == 404 and sent.json()["error"]["code"] == "not_found"


def test_another_users_wallet_pages_are_not_found(two_users) -> None:
    wallet, as_bob = two_users
    assert wallet.address not in as_bob.get("/wallet/?fragment=wallets").content.decode()
    assert as_bob.get(f"/wallet/{wallet.address}").status_code == 404
    send = {"to": wallet.address, "amount": "1", "password": PASSWORD}
    assert as_bob.post(f"/wallet/{wallet.address}/send", send).status_code == 404
    assert as_bob.post(f"/wallet/{wallet.address}/faucet").status_code == 404


def test_wallet_apis_take_no_api_key_or_provider_token(two_users) -> None:
    wallet, _ = two_users
    for header in ("Bearer aitbc_not_a_key", "Bearer some-provider-token"):
        client = Client(HTTP_AUTHORIZATION=header)
        assert client.get("/v1/wallets").status_code in API_REFUSAL
        assert client.get(f"/v1/wallets/{wallet.address}").status_code in API_REFUSAL


# -- websockets ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_events_socket_refuses_a_foreign_origin_and_gives_each_user_only_their_events(
    settings, django_user_model
) -> None:
    settings.CHANNEL_LAYERS = in_memory_layer()
    alice = django_user_model.objects.create_user("alice", password="alice password 1")
    bob = django_user_model.objects.create_user("bob", password="bob password 12")
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def scenario() -> None:
        for origin in (b"http://evil.example", b"null"):
            foreign = events_socket(alice_cookie, origin=origin)
            connected, _ = await foreign.connect(timeout=RECEIVE_TIMEOUT)
            assert not connected, origin
        sockets = {"alice": events_socket(alice_cookie), "bob": events_socket(bob_cookie)}
        try:
            for socket in sockets.values():
                connected, _ = await socket.connect(timeout=RECEIVE_TIMEOUT)
                assert connected
                assert (await socket.receive_json_from(timeout=RECEIVE_TIMEOUT))["type"] == "hello"
            await sync_to_async(send_event)(user_group(alice.pk), {"type": "job", "secret": "alice's"})
            await sync_to_async(send_event)(EVENTS_GROUP, {"type": "block", "height": 7})
            assert (await sockets["alice"].receive_json_from(timeout=RECEIVE_TIMEOUT))["secret"] == "alice's"
            # Bob's socket got the public event after alice's private one, and never hers.
            assert await sockets["bob"].receive_json_from(timeout=RECEIVE_TIMEOUT) == {"type": "block", "height": 7}
        finally:
            for socket in sockets.values():
                await socket.disconnect()
            await close_layer()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_the_p2p_socket_of_a_process_that_is_no_node_refuses_every_peer(settings) -> None:
    from channels.testing import WebsocketCommunicator

    from aitbc_site.asgi import application
    from chain import network

    settings.CHANNEL_LAYERS = in_memory_layer()
    assert network.driver() is None

    async def scenario() -> None:
        socket = WebsocketCommunicator(application, "/p2p/", headers=[(b"host", b"127.0.0.1")])
        connected, code = await socket.connect(timeout=RECEIVE_TIMEOUT)
        assert not connected and code == 4404

    async_to_sync(scenario)()


# -- revoked keys ----------------------------------------------------------------------------------

KEY_ROLES = {API_KEY, SESSION_OR_KEY, OWNER_OR_KEY_STAFF, OWNER_OR_TOKEN}


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_is_401_on_every_route_that_takes_a_key(settings, tmp_path: Path, django_user_model) -> None:
    from marketplace.gateway import keys
    from marketplace.models import Deposit

    settings.DATA_DIR = tmp_path
    cache.clear()
    owner = django_user_model.objects.create_user("erin")
    deposit = Deposit.objects.create(
        owner=owner, payer="ait1payer", escrow_id="d" * 64, amount=10**6, timeout_height=10**6, state=Deposit.OPEN
    )
    created = keys.apikey_create(owner=owner, deposit_id=deposit.pk)
    with_key = Client(HTTP_AUTHORIZATION=f"Bearer {created.secret}")
    assert with_key.get(f"/v1/deposits/{deposit.pk}").status_code == 200
    keys.apikey_revoke(key_id=created.key.pk, owner=owner)
    checked = 0
    for route, methods in ACCESS.items():
        for method, who in methods.items():
            if who not in KEY_ROLES:
                continue
            path = path_for(route).replace(PATH_VALUES["key"], created.secret)
            path = path.replace(PATH_VALUES["deposit_id"], deposit.pk)
            if method == "GET":
                answer = with_key.get(path)
            else:
                answer = with_key.post(path, data='{"model": "m", "prompt": "Hi"}', content_type="application/json")
            assert answer.status_code == 401, (method, path, answer.status_code, answer.content[:200])
            checked += 1
    assert checked >= 15
