"""``POST /v1/faucet``: test AIT for a logged-in user on a devnet."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aitbc_site.errors import ApiError
from wallet import faucet
from wallet.api import ErrorSerializer, to_api_error


class FaucetInput(serializers.Serializer):
    address = serializers.CharField(max_length=200, help_text="the address to fund (ait1...)")


class GrantSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="the faucet's transfer; follow it on the explorer")
    to = serializers.CharField()
    amount = serializers.IntegerField(help_text="uait")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


class FaucetView(APIView):
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, faucet.FaucetNotConfigured):
            exc = ApiError(exc.message, code="not_found", status=404)
        elif isinstance(exc, faucet.FaucetThrottled):
            exc = ApiError(exc.message, code="rate_limited", status=429, headers={"Retry-After": str(exc.retry_after)})
        return super().handle_exception(to_api_error(exc) or exc)

    @extend_schema(
        operation_id="faucet_send",
        summary="Send test AIT from the devnet's faucet",
        description="Sends `AITBC_FAUCET_AMOUNT` uait (default 10 AIT) from the faucet wallet to `address`. "
        "Answers once the node admitted the transfer; it commits with the next block.",
        tags=["wallets"],
        request=FaucetInput,
        responses={
            202: GrantSerializer,
            400: _error("malformed or invalid_address"),
            403: _error("not logged in"),
            404: _error("not_found: no faucet is configured on this network"),
            409: _error("a conflict from the node (insufficient_funds of the faucet, bad_nonce)"),
            429: _error("rate_limited: too many grants this hour (Retry-After)"),
            503: _error("node_unavailable"),
        },
    )
    def post(self, request: Request) -> Response:
        data = FaucetInput(data=request.data)
        data.is_valid(raise_exception=True)
        grant = faucet.faucet_send(user_id=request.user.pk, to=data.validated_data["address"])
        return Response({"id": grant.id, "to": grant.to, "amount": grant.amount}, status=status.HTTP_202_ACCEPTED)
