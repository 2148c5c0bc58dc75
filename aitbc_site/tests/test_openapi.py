"""The OpenAPI schema is valid, covers every URL the API serves, and documents every error."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_spec_validator import validate
from rest_framework.views import APIView

pytestmark = pytest.mark.django_db

# Endpoints of the API that are plain Django views (documented by aitbc_site.openapi).
PLAIN_API_VIEWS = {"health", "metrics", "automation-webhook"}
# A fault-injection hook of the process tests: 404 unless AITBC_TEST_HOOKS, never in production.
NOT_DOCUMENTED = {"chain-test-partition"}


def _walk(patterns, prefix: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def api_paths() -> dict[str, str]:
    """``{openapi path: url name}`` of every URL answered by a DRF view or a plain API view."""
    out = {}
    for route, pattern in _walk(get_resolver().url_patterns):
        view_class = getattr(pattern.callback, "cls", None)
        is_drf = isinstance(view_class, type) and issubclass(view_class, APIView)
        if pattern.name in NOT_DOCUMENTED or not (is_drf or pattern.name in PLAIN_API_VIEWS):
            continue
        if route.startswith(("admin/", "api/")):
            continue
        out["/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)] = pattern.name
    return out


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    from django.test import Client

    with django_db_blocker.unblock():
        answer = Client().get("/api/schema/", {"format": "json"})
    assert answer.status_code == 200
    return answer.json()


def test_the_schema_is_valid_openapi(schema) -> None:
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_the_schema_covers_every_url_the_api_serves(schema) -> None:
    served = api_paths()
    assert len(served) > 30, served
    missing = sorted(path for path in served if path not in schema["paths"])
    assert not missing, f"served but not in the schema: {missing}"
    documented_only = sorted(path for path in schema["paths"] if path not in served)
    assert not documented_only, f"in the schema but not served: {documented_only}"


def test_every_operation_documents_its_errors_in_the_one_error_shape(schema) -> None:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
            assert errors, f"{method.upper()} {path} documents no error"
            for code, response in errors.items():
                assert response.get("description"), f"{method.upper()} {path} {code} has no description"
                media = response["content"]["application/json"]["schema"]
                assert media == {"$ref": "#/components/schemas/Error"}, f"{method.upper()} {path} {code}: {media}"


def test_the_docs_page_is_public_and_uses_local_assets(client) -> None:
    page = client.get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/" in page
    assert "cdn" not in page.lower() and "https://" not in page
