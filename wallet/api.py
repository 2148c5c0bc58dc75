"""REST endpoints of the wallet service: a logged-in user's own wallets.

Thin views: input serializers check shapes, services and selectors do the work,
and ``WalletAPIView.handle_exception`` is the one place wallet, protocol and
node errors become ``ApiError`` answers. Another user's wallet is a 404, exactly
like a missing one, so addresses held by others cannot be probed.
"""

from __future__ import annotations

import logging
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aitbc_site.errors import ApiError
from chain.client import ChainUnavailable
from chain.protocol.encoding import MAX_INT
from chain.protocol.errors import ProtocolError
from wallet import selectors, services
from wallet.errors import (
    AddressMismatch,
    InvalidMnemonic,
    InvalidWalletName,
    KeystoreUnsupported,
    WalletError,
    WalletExists,
    WalletNotFound,
    WeakPassword,
    WrongPasswordOrCorrupted,
)
from wallet.models import Wallet

logger = logging.getLogger("aitbc.wallet")

_WALLET_ERROR_STATUS: dict[type[WalletError], int] = {
    WrongPasswordOrCorrupted: 403,
    KeystoreUnsupported: 400,
    AddressMismatch: 400,
    InvalidMnemonic: 400,
    WeakPassword: 400,
    InvalidWalletName: 400,
    WalletExists: 409,
}
NODE_UNAVAILABLE = "the chain node is unavailable; try again later"


def to_api_error(exc: Exception) -> ApiError | None:
    """The ``ApiError`` answering a wallet, protocol or node error; None for anything else."""
    if isinstance(exc, WalletNotFound):
        return ApiError(exc.message, code="not_found", status=404)
    if isinstance(exc, WalletError):
        status_code = next((s for cls, s in _WALLET_ERROR_STATUS.items() if isinstance(exc, cls)), 400)
        return ApiError(exc.message, code=exc.code, status=status_code)
    if isinstance(exc, ProtocolError):
        return ApiError(exc.message, code=exc.code, status=exc.status)
    if isinstance(exc, ChainUnavailable):
        # The detail names internal URLs: it goes to the log, not to the user.
        logger.warning("chain node unavailable: %s", exc)
        return ApiError(NODE_UNAVAILABLE, code="node_unavailable", status=503)
    return None


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: no strings, floats or booleans (protocol.md's integers)."""

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


def _password_field(help_text: str) -> serializers.CharField:
    # Passwords are used exactly as typed: no trimming.
    return serializers.CharField(
        write_only=True, trim_whitespace=False, max_length=1024, style={"input_type": "password"}, help_text=help_text
    )


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class WalletSerializer(serializers.ModelSerializer):
    class Meta:
        model = Wallet
        fields = ["name", "address", "pubkey", "created_at"]


class WalletDetailSerializer(WalletSerializer):
    balance = serializers.IntegerField(allow_null=True, help_text="uait, from the node; null if it cannot answer")
    nonce = serializers.IntegerField(allow_null=True, help_text="the account's nonce on the node")
    chain_error = ErrorDetailSerializer(allow_null=True, help_text="why balance and nonce are null")

    class Meta(WalletSerializer.Meta):
        fields = [*WalletSerializer.Meta.fields, "balance", "nonce", "chain_error"]


class CreatedWalletSerializer(WalletSerializer):
    mnemonic = serializers.CharField(help_text="24-word backup of the key: shown this once, never stored")

    class Meta(WalletSerializer.Meta):
        fields = [*WalletSerializer.Meta.fields, "mnemonic"]


class WalletCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    password = _password_field("encrypts the wallet's key; needed to send (at least 8 characters)")


class WalletImportInput(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    password = _password_field("for a mnemonic: the new wallet's password; for a keystore: its password")
    mnemonic = serializers.CharField(
        required=False, write_only=True, max_length=1000, help_text="BIP-39 words (give this or keystore)"
    )
    passphrase = serializers.CharField(
        required=False, write_only=True, allow_blank=True, trim_whitespace=False, max_length=1024, default=""
    )
    keystore = serializers.JSONField(required=False, help_text="a keystore file's content (give this or mnemonic)")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("mnemonic" in attrs) == ("keystore" in attrs):
            raise serializers.ValidationError("give exactly one of mnemonic and keystore")
        if "keystore" in attrs and attrs.get("passphrase"):
            raise serializers.ValidationError("passphrase goes with a mnemonic, not a keystore")
        return attrs


class WalletSendInput(serializers.Serializer):
    # Checked as an address by the protocol's rules (invalid_address), not trimmed or pre-judged here.
    to = serializers.CharField(max_length=200, allow_blank=True, trim_whitespace=False)
    amount = StrictIntegerField(min_value=1, max_value=MAX_INT, help_text="uait")
    fee = StrictIntegerField(required=False, min_value=0, max_value=MAX_INT, help_text="uait; default: min_fee")
    memo = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, max_length=256, default="")
    password = _password_field("the wallet's password")


class SentTransactionSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="transaction id; follow it at GET /v1/chain/transactions/{id} on the node")
    tx = serializers.JSONField(help_text="the signed transaction as submitted")


def _errors(*codes: int, **overrides: str) -> dict[int, OpenApiResponse]:
    """Documented error answers; ``overrides`` (``e403="..."``) replace a status's description."""
    descriptions = {
        400: "invalid input (malformed, invalid_address, invalid_name, weak_password, invalid_mnemonic, "
        "unsupported_keystore, address_mismatch, or a protocol error from the node)",
        403: "not logged in, or wrong_password",
        404: "no such wallet among yours",
        409: "wallet_exists, or a protocol conflict from the node (bad_nonce, duplicate, insufficient_funds)",
        429: "rate_limited by the node",
        503: "node_unavailable or mempool_full",
    }
    descriptions |= {int(name[1:]): text for name, text in overrides.items()}
    return {code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in codes}


class WalletAPIView(APIView):
    permission_classes = [IsAuthenticated]
    # JSON only: amounts are JSON integers, which form encodings cannot carry.
    parser_classes = [JSONParser]

    def handle_exception(self, exc: Exception) -> Response:
        return super().handle_exception(to_api_error(exc) or exc)


class WalletListCreateView(WalletAPIView):
    @extend_schema(
        operation_id="wallets_list",
        tags=["wallets"],
        responses={200: WalletSerializer(many=True), **_errors(403, e403="not logged in")},
    )
    def get(self, request: Request) -> Response:
        """Your wallets."""
        return Response(WalletSerializer(selectors.wallet_list(owner=request.user), many=True).data)

    @extend_schema(
        operation_id="wallets_create",
        tags=["wallets"],
        request=WalletCreateInput,
        responses={201: CreatedWalletSerializer, **_errors(400, 403, 409, e403="not logged in")},
    )
    def post(self, request: Request) -> Response:
        """Create a wallet from a new 24-word mnemonic; the answer shows the mnemonic once."""
        data = _valid(WalletCreateInput, request)
        created = services.wallet_create(owner=request.user, name=data["name"], password=data["password"])
        body = WalletSerializer(created.wallet).data | {"mnemonic": created.mnemonic}
        return Response(body, status=status.HTTP_201_CREATED)


class WalletImportView(WalletAPIView):
    @extend_schema(
        operation_id="wallets_import",
        tags=["wallets"],
        request=WalletImportInput,
        responses={201: WalletSerializer, **_errors(400, 403, 409)},
    )
    def post(self, request: Request) -> Response:
        """Import a wallet from its mnemonic (and passphrase) or from a keystore file and its password."""
        data = _valid(WalletImportInput, request)
        if "mnemonic" in data:
            wallet = services.wallet_import_mnemonic(
                owner=request.user,
                name=data["name"],
                mnemonic=data["mnemonic"],
                passphrase=data["passphrase"],
                password=data["password"],
            )
        else:
            wallet = services.wallet_import_keystore(
                owner=request.user, name=data["name"], keystore=data["keystore"], password=data["password"]
            )
        return Response(WalletSerializer(wallet).data, status=status.HTTP_201_CREATED)


class WalletDetailView(WalletAPIView):
    @extend_schema(
        operation_id="wallets_retrieve",
        tags=["wallets"],
        responses={200: WalletDetailSerializer, **_errors(403, 404, e403="not logged in")},
    )
    def get(self, request: Request, address: str) -> Response:
        """One of your wallets, with its balance and nonce from the node.

        If the node cannot answer, ``balance`` and ``nonce`` are null and
        ``chain_error`` says why: the wallet itself is still shown.
        """
        wallet = selectors.wallet_get(owner=request.user, address=address)
        body = WalletSerializer(wallet).data | {"balance": None, "nonce": None, "chain_error": None}
        try:
            account = selectors.wallet_account(address=wallet.address)
        except (ProtocolError, ChainUnavailable) as exc:
            body["chain_error"] = to_api_error(exc).as_dict()["error"]
        else:
            body["balance"], body["nonce"] = account["balance"], account["nonce"]
        return Response(body)


class WalletSendView(WalletAPIView):
    @extend_schema(
        operation_id="wallets_send",
        tags=["wallets"],
        request=WalletSendInput,
        responses={202: SentTransactionSerializer, **_errors(400, 403, 404, 409, 429, 503)},
    )
    def post(self, request: Request, address: str) -> Response:
        """Sign a transfer from one of your wallets with its password and submit it to the node.

        202 means the node admitted it to its mempool; follow the id on the node
        until it is committed or rejected.
        """
        wallet = selectors.wallet_get(owner=request.user, address=address)
        data = _valid(WalletSendInput, request)
        sent = services.wallet_send(
            wallet=wallet,
            password=data["password"],
            to=data["to"],
            amount=data["amount"],
            fee=data.get("fee"),
            memo=data["memo"],
        )
        return Response({"id": sent.id, "tx": sent.tx}, status=status.HTTP_202_ACCEPTED)


def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
