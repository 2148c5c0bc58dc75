"""``/v1/keys``: a logged-in user's gateway API keys over REST (the dashboard's script uses the same).

Managing keys needs a login: a request authenticated by an API key is 403 here.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.api import MarketAPIView, _errors, _valid
from marketplace.gateway import keys, services
from marketplace.gateway.models import ApiKey
from marketplace.serializers import StrictIntegerField

TAG_KEYS = "gateway: API keys"


class IsLoggedInUser(BasePermission):
    message = "managing API keys needs a login, not an API key"

    def has_permission(self, request: Request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and not isinstance(request.auth, ApiKey))


class KeyCreateInput(serializers.Serializer):
    deposit = serializers.CharField(required=False, max_length=40, help_text="default: your newest open deposit")
    name = serializers.CharField(required=False, allow_blank=True, max_length=100)
    spending_cap = StrictIntegerField(required=False, allow_null=True, min_value=0, help_text="uait; none: no cap")
    models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=100, help_text="empty: any model"
    )
    rate_limit = StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000, help_text="requests per minute"
    )


class KeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="the key's first characters")
    deposit = serializers.CharField(source="deposit_id")
    spending_cap = serializers.IntegerField(allow_null=True)
    spent = serializers.IntegerField(help_text="charged plus reserved by the key's jobs in flight (uait)")
    models = serializers.ListField(child=serializers.CharField(), source="allowed_models")
    rate_limit = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField()


class CreatedKeySerializer(KeySerializer):
    key = serializers.CharField(help_text="the key itself: shown this once, stored hashed")


def key_answer(record: ApiKey, **extra: Any) -> dict[str, Any]:
    record.spent = services.key_spending(record)
    return KeySerializer(record).data | extra


class KeysView(MarketAPIView):
    permission_classes = [IsLoggedInUser]

    @extend_schema(
        operation_id="keys_list",
        tags=[TAG_KEYS],
        responses={200: KeySerializer(many=True), **_errors(e403="not_authenticated or forbidden: log in")},
    )
    def get(self, request: Request) -> Response:
        """Your gateway API keys, newest first (the keys themselves were shown once, at creation)."""
        return Response([key_answer(key) for key in keys.apikey_list(owner=request.user)])

    @extend_schema(
        operation_id="keys_create",
        tags=[TAG_KEYS],
        request=KeyCreateInput,
        responses={
            201: CreatedKeySerializer,
            **_errors(
                e400="malformed",
                e403="not_authenticated or forbidden: log in",
                e404="not_found: no such deposit among yours",
                e409="no_deposit, deposit_not_open",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Create a key bound to one of your deposits; the answer shows it once."""
        data = _valid(KeyCreateInput, request)
        created = keys.apikey_create(
            owner=request.user,
            deposit_id=data.get("deposit"),
            name=data.get("name", ""),
            spending_cap=data.get("spending_cap"),
            allowed_models=data.get("models", []),
            rate_limit=data.get("rate_limit"),
        )
        return Response(key_answer(created.key, key=created.secret), status=status.HTTP_201_CREATED)


class KeyRevokeView(MarketAPIView):
    permission_classes = [IsLoggedInUser]

    @extend_schema(
        operation_id="keys_revoke",
        tags=[TAG_KEYS],
        request=None,
        responses={200: KeySerializer, **_errors(e403="not_authenticated or forbidden: log in", e404="not_found")},
    )
    def post(self, request: Request, key_id: int) -> Response:
        """Revoke a key: its next request is 401."""
        return Response(key_answer(keys.apikey_revoke(key_id=key_id, owner=request.user)))
