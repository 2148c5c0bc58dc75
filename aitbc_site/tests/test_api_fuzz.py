"""Every operation of the OpenAPI schema, fuzzed by schemathesis, anonymous and authenticated.

Requests go through Django's WSGI handler in this process, over the test database: the
chain of the marketplace's tests, a coordinator, a registered provider, a user with a
deposit, an API key and a job, a staff user. Each generated request is sent once
without credentials and once with each credential the operation accepts (a session,
a staff session, an API key, a provider token). No answer may be a 5xx, and every
answer must match the schema: a documented status, its content type and its body.

The number of examples per operation is ``AITBC_FUZZ_EXAMPLES`` (default 10, for CI);
``docs/release-checks.md`` has the longer run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client, RequestFactory
from drf_spectacular.views import SpectacularAPIView
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import Client as WerkzeugClient

from marketplace import conf as market_conf
from marketplace.gateway import keys
from marketplace.gateway.models import ApiKey
from marketplace.tests import conftest as market_fixtures

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(600)]

# The marketplace's fixtures (a coordinator over the test database's ledger), for this module only.
market_env, kicked = market_fixtures.market_env, market_fixtures.kicked
ledger, market = market_fixtures.ledger, market_fixtures.market

EXAMPLES = int(os.environ.get("AITBC_FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("AITBC_FUZZ_SEED", "20261127"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _served_schema() -> dict:
    """The schema exactly as ``GET /api/schema/`` serves it (no database needed to build it)."""
    response = SpectacularAPIView.as_view(permission_classes=[])(RequestFactory().get("/api/schema/?format=json"))
    response.render()
    return json.loads(response.content)


schema = schemathesis.openapi.from_dict(
    _served_schema(),
    config=schemathesis.Config.from_dict(
        {"seed": SEED, "generation": {"max-examples": EXAMPLES}, "phases": {"coverage": {"enabled": False}}}
    ),
)
schema.app = get_wsgi_application()


@contextlib.contextmanager
def keeping_the_test_transaction() -> Iterator[None]:
    """What Django's test client does around each request: the request must not close the test's
    database connection (its transaction holds everything the test set up)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@dataclass(frozen=True)
class Caller:
    headers: dict[str, str]
    cookies: dict[str, str] = field(default_factory=dict)
    key_id: int | None = None

    def prepare(self) -> None:
        # The fuzzed user may revoke their own key (POST /v1/keys/{id}/revoke): keep it usable.
        if self.key_id is not None:
            ApiKey.objects.filter(pk=self.key_id).update(revoked_at=None)


ANONYMOUS = Caller({})


@pytest.fixture
def callers(market, settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, Caller]:
    """Real records and the headers of each kind of caller: ``{name: headers}``."""
    settings.CHAIN_SUBMIT_RATE = settings.MARKET_JOB_RATE = "100000/s"
    monkeypatch.setattr(market_conf, "POLL_WAIT_S", 0.0)
    from aitbc_site import tasks

    # The ping's task would go to this run's broker with no worker to take it.
    monkeypatch.setattr(tasks.ping, "delay", lambda *args, **kwargs: None)

    users = get_user_model().objects
    user = users.create_user("fuzz-user", password="a long password 1")
    staff = users.create_user("fuzz-staff", password="a long password 2", is_staff=True)

    owner = Client()
    owner.force_login(user)
    lock = market.lock(market.alice, 1_000_000, timeout_blocks=3 * market.required_blocks())
    opened = owner.post("/v1/deposits", data={"escrow_tx": lock}, content_type="application/json")
    assert opened.status_code == 202, opened.content
    market.pump()
    created = keys.apikey_create(owner=user, deposit_id=opened.json()["id"], name="fuzz")
    provider = market.provider("fuzz-provider")
    submitted = market.submit(http=owner)
    assert submitted.status_code == 202, submitted.content
    # Offline from here, so a fuzzed job waits for no one.
    from marketplace.services import providers

    providers.provider_disconnected(address=provider.address)

    def session(who) -> Caller:
        client = Client()
        client.force_login(who)
        csrf = _get_new_csrf_string()
        return Caller({"X-CSRFToken": csrf}, {"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf})

    return {
        "user": session(user),
        "staff": session(staff),
        "api key": Caller({"Authorization": f"Bearer {created.secret}"}, key_id=created.key.pk),
        "provider": Caller({"Authorization": f"Bearer {provider.token}"}),
    }


def _callers_for(operation, callers: dict[str, Caller]) -> list[tuple[str, Caller]]:
    security = operation.definition.raw.get("security") or []
    schemes = {name for requirement in security for name in requirement}
    chosen = [("anonymous", ANONYMOUS)]
    if "cookieAuth" in schemes:
        chosen += [("user", callers["user"]), ("staff", callers["staff"])]
    if "apiKey" in schemes:
        chosen.append(("api key", callers["api key"]))
    if "providerToken" in schemes:
        chosen.append(("provider", callers["provider"]))
    return chosen


FUZZ_SETTINGS = hypothesis_settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _fuzzer(operation, mode: GenerationMode, callers_here: list[tuple[str, Caller]]):
    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        for name, caller in callers_here:
            try:
                caller.prepare()
                with keeping_the_test_transaction():
                    case.call_and_validate(headers=caller.headers, cookies=caller.cookies, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:
                exc.add_note(f"caller: {name}")
                raise

    return fuzz


def _credentials_are_accepted(callers: dict[str, Caller]) -> None:
    """Each caller's headers open what they should, so no caller is silently fuzzed as anonymous."""
    with keeping_the_test_transaction():
        for who in ("user", "staff"):
            http = WerkzeugClient(schema.app)
            for name, value in callers[who].cookies.items():
                http.set_cookie(name, value)
            pinged = http.post("/v1/system/ping", headers=callers[who].headers)
            assert pinged.status_code == 202, (who, pinged.get_data())
        http = WerkzeugClient(schema.app)
        assert http.post("/v1/system/ping").status_code == 403
        assert http.get("/v1/deposits", headers=callers["api key"].headers).status_code == 200
        heartbeat = http.post("/v1/providers/heartbeat", json={"active": 0}, headers=callers["provider"].headers)
        assert heartbeat.status_code == 200, heartbeat.get_data()


def _summary(exc: BaseException) -> str:
    """The failure's text without the curl line, whose body can be megabytes."""
    text = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
    lines = [line[:300] for line in text.splitlines() if not line.lstrip().startswith("curl ")]
    return "\n".join(lines[:40])


def test_every_operation_answers_as_documented(callers) -> None:
    """One test over every operation (the records are set up once): every failure is listed at the end."""
    _credentials_are_accepted(callers)
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzzer(operation, mode, _callers_for(operation, callers))()
            except Unsatisfiable:
                # No invalid input exists (no parameters, or only free-form strings): nothing to send.
                assert mode is GenerationMode.NEGATIVE, operation
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {_summary(exc)}")
    assert not failures, "\n\n".join(failures)


def test_a_body_over_the_upload_limit_is_a_json_400_naming_the_limit(client, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    answer = client.post("/v1/jobs", data=json.dumps({"prompt": "x" * 2000}), content_type="application/json")
    assert answer.status_code == 400 and answer["Content-Type"] == "application/json"
    assert answer.json()["error"] == {"code": "malformed", "message": "the request body is larger than 1000 bytes"}
