"""Gateway API keys: created (shown once, stored hashed), listed, revoked; who is calling; rate limits.

A key is bound to one of its owner's deposits: every gateway request is a job paid from
that deposit. It may carry a spending cap (uait, counting charges and the reservations
of its jobs in flight), an allow-list of models, and a rate of its own.

Keys also authenticate the marketplace's REST API for reading (``ApiKeyAuthentication``,
appended to ``marketplace.auth.CLIENT_AUTHENTICATION_CLASSES``): a key reads its owner's
jobs, receipts and deposits; anything else with a key is 403 (log in for that).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import exceptions as drf_exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS

from aitbc_site import throttling
from aitbc_site.errors import ApiError
from marketplace.gateway import conf
from marketplace.gateway.models import ApiKey
from marketplace.models import Deposit

KEY_PREFIX = "aitbc_"
SHOWN_PREFIX = 12  # characters of the key kept in clear to recognise it in lists
MAX_ALLOWED_MODELS = 100
AUTHENTICATE_HEADER = 'Bearer realm="aitbc"'


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once; only its hash is stored


def _usable_deposit(*, owner: AbstractBaseUser, deposit_id: str | None) -> Deposit:
    deposits = Deposit.objects.filter(owner=owner)
    if deposit_id:
        deposit = deposits.filter(pk=deposit_id).first()
        if deposit is None:
            raise ApiError(f"no deposit {deposit_id} among yours", code="not_found", status=404)
    else:
        deposit = deposits.filter(state__in=(Deposit.OPEN, Deposit.PENDING)).order_by("-created_at").first()
        if deposit is None:
            raise ApiError(
                "you have no open deposit: open one (POST /v1/deposits) and bind the key to it",
                code="no_deposit",
                status=409,
            )
    if deposit.state not in (Deposit.OPEN, Deposit.PENDING):
        raise ApiError(
            f"deposit {deposit.pk} is {deposit.state}: a key cannot draw on it", code="deposit_not_open", status=409
        )
    return deposit


def _check_limits(spending_cap: int | None, allowed_models: list[str], rate_limit: int | None) -> None:
    if spending_cap is not None and (type(spending_cap) is not int or spending_cap < 0):
        raise ApiError("spending_cap must be a non-negative integer (uait)", code="malformed")
    if rate_limit is not None and (type(rate_limit) is not int or not 1 <= rate_limit <= 1_000_000):
        raise ApiError("rate_limit must be an integer in [1, 1000000] (requests per minute)", code="malformed")
    if len(allowed_models) > MAX_ALLOWED_MODELS or not all(
        isinstance(m, str) and 0 < len(m) <= 200 for m in allowed_models
    ):
        raise ApiError(f"models must be at most {MAX_ALLOWED_MODELS} model names", code="malformed")


def apikey_create(
    *,
    owner: AbstractBaseUser,
    deposit_id: str | None = None,
    name: str = "",
    spending_cap: int | None = None,
    allowed_models: list[str] | tuple[str, ...] = (),
    rate_limit: int | None = None,
) -> CreatedKey:
    """A new key for ``owner`` drawing on ``deposit_id`` (default: their newest open deposit)."""
    allowed = list(dict.fromkeys(allowed_models))
    _check_limits(spending_cap, allowed, rate_limit)
    deposit = _usable_deposit(owner=owner, deposit_id=deposit_id)
    secret = KEY_PREFIX + secrets.token_urlsafe(30)
    key = ApiKey.objects.create(
        owner=owner,
        deposit=deposit,
        name=name[:100],
        prefix=secret[:SHOWN_PREFIX],
        key_hash=hash_key(secret),
        spending_cap=spending_cap,
        allowed_models=allowed,
        rate_limit=rate_limit,
    )
    return CreatedKey(key=key, secret=secret)


def apikey_list(*, owner: AbstractBaseUser | None) -> QuerySet[ApiKey]:
    """``owner``'s keys, newest first (None: everyone's, for operators)."""
    keys = ApiKey.objects.select_related("owner", "deposit").order_by("-created_at", "-id")
    return keys if owner is None else keys.filter(owner=owner)


def apikey_revoke(*, key_id: int, owner: AbstractBaseUser | None) -> ApiKey:
    """Revoke a key (at once: its next request is 401). Revoking twice changes nothing."""
    with transaction.atomic():
        keys = ApiKey.objects.select_for_update().filter(pk=key_id)
        if owner is not None:
            keys = keys.filter(owner=owner)
        key = keys.first()
        if key is None:
            raise ApiError(f"no API key {key_id} among yours", code="not_found", status=404)
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=key.revoked_at)
        return key


def key_for_secret(secret: str) -> ApiKey:
    """The active key ``secret`` is, with its owner and deposit; 401 ``ApiError`` if none."""
    key = None
    if looks_like_key(secret):
        key = ApiKey.objects.select_related("owner", "deposit").filter(key_hash=hash_key(secret)).first()
    # The hash was the lookup; compare again in constant time so no timing tells a near miss.
    if key is None or not hmac.compare_digest(key.key_hash, hash_key(secret)):
        raise not_authenticated("unknown API key")
    if key.revoked_at is not None:
        raise not_authenticated("this API key was revoked")
    if not key.owner.is_active:
        raise not_authenticated("this API key's owner is disabled")
    return key


def not_authenticated(message: str) -> ApiError:
    return ApiError(message, code="not_authenticated", status=401, headers={"WWW-Authenticate": AUTHENTICATE_HEADER})


def bearer_secret(authorization: str) -> str | None:
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


def touch(key: ApiKey) -> None:
    """Record the key's use, at most once per ``conf.LAST_USED_RESOLUTION_S`` (one UPDATE, usually none)."""
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > timedelta(seconds=conf.LAST_USED_RESOLUTION_S):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


# -- rate limits ---------------------------------------------------------------------------------


def rate_check(key: ApiKey) -> None:
    """Count one request against the key's rate (per minute); 429 when over it."""
    limit = key.rate_limit or conf.RATE_PER_MIN
    throttling.take(
        scope="gateway", caller=f"key:{key.pk}", rate=throttling.Rate(limit, 60), what="requests with this API key"
    )


# -- the REST API -------------------------------------------------------------------------------


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer aitbc_...`` on the marketplace's REST API: reads only.

    Other bearer tokens are left to the other authentications. An unknown or revoked key
    is 401; a key used to write (submit, cancel, open deposits, manage keys) is 403.
    """

    def authenticate(self, request):
        secret = bearer_secret(get_authorization_header(request).decode("latin-1"))
        if secret is None or not looks_like_key(secret):
            return None
        key = key_for_secret(secret)  # an ApiError (401) goes straight to the error handler
        if request.method not in SAFE_METHODS:
            raise drf_exceptions.PermissionDenied(
                "an API key reads the marketplace API and uses the gateway; log in to change anything"
            )
        # A key reads what its owner owns: staff rights stay with the staff member's login, so a
        # leaked or shared key of an operator does not open everyone's jobs and deposits. This
        # user object is the key's own (loaded with it) and is never saved.
        owner = key.owner
        owner.is_staff = owner.is_superuser = False
        return owner, key

    def authenticate_header(self, request) -> str:
        return AUTHENTICATE_HEADER
