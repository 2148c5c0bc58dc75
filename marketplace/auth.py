"""Who is calling: clients (sessions, gateway API keys), providers (bearer tokens), job tokens.

``CLIENT_AUTHENTICATION_CLASSES`` is the hook for the gateway's API keys: append an
authentication class to this list (the same list object) at start-up and every client
endpoint of the marketplace accepts it.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from aitbc_site.throttling import Rate, RateThrottle, parse_rate
from marketplace import conf
from marketplace.gateway.keys import ApiKeyAuthentication
from marketplace.models import Provider
from marketplace.services.providers import provider_by_token

# The gateway's API keys (``Authorization: Bearer aitbc_...``) read the client endpoints.
CLIENT_AUTHENTICATION_CLASSES: list[type[BaseAuthentication]] = [SessionAuthentication, ApiKeyAuthentication]

# Anonymous clients (paying with their own escrow_tx) read their job with this header.
JOB_TOKEN_HEADER = "X-AITBC-Job-Token"


def job_token(request: Request) -> str | None:
    value = request.headers.get(JOB_TOKEN_HEADER, "").strip()
    return value or None


class ProviderTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <token>`` from ``POST /v1/providers/register``."""

    def authenticate(self, request: Request):
        scheme, _, token = get_authorization_header(request).decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        provider = provider_by_token(token.strip())
        if provider is None:
            raise AuthenticationFailed("unknown provider token: register again")
        from django.contrib.auth.models import AnonymousUser

        return AnonymousUser(), provider

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="providers"'


class IsProvider(BasePermission):
    message = "a provider's bearer token is required"

    def has_permission(self, request: Request, view) -> bool:
        return isinstance(request.auth, Provider)


class PublicRateThrottle(RateThrottle):
    """The public endpoints' rate per client address (``AITBC_MARKET_PUBLIC_RATE``).

    Counted per address for everyone: logged-in users read the public lists too.
    """

    scope = "marketplace-public"
    what = "requests to the public endpoints from one address"

    def rate(self) -> Rate:
        return parse_rate(conf.PUBLIC_RATE, setting="AITBC_MARKET_PUBLIC_RATE")


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema shows the gateway's API keys on the REST API."""

    target_class = ApiKeyAuthentication
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "a gateway API key (aitbc_...): reads only"}


class ProviderTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema shows the provider token."""

    target_class = ProviderTokenAuthentication
    name = "providerToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "token from POST /v1/providers/register"}
