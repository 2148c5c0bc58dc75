"""The node's RPC (``protocol.md``): thin views over services and selectors."""

from __future__ import annotations

from django.db import DatabaseError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aitbc_site.direct import one_thread
from aitbc_site.throttling import ChainSubmitThrottle
from chain import selectors, services
from chain.protocol.encoding import parse_strict
from chain.protocol.errors import ProtocolError

ERRORS = {
    400: OpenApiResponse(
        description="malformed, invalid_address, wrong_chain, bad_signature, fee_too_low, timeout_too_short"
    ),
    403: OpenApiResponse(description="not_arbiter"),
    404: OpenApiResponse(description="escrow_not_found, not_found"),
    409: OpenApiResponse(description="bad_nonce, duplicate, insufficient_funds, escrow_closed, exceeds_escrow"),
    429: OpenApiResponse(description="rate_limited: too many submissions from this address (Retry-After)"),
    503: OpenApiResponse(description="mempool_full, or the node has no chain"),
}
MAX_BODY = 8 * 1024 * 1024


class StrictJSONParser(BaseParser):
    """Strict JSON (``protocol.md``): duplicate keys, floats, NaN, lone surrogates are ``malformed``."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        body = stream.read(MAX_BODY + 1) if stream is not None else b""
        if len(body) > MAX_BODY:
            raise ProtocolError("malformed", f"body larger than {MAX_BODY} bytes")
        return parse_strict(body)


@one_thread  # the whole middleware stack in one hop to the request's thread (aitbc_site.direct)
class NodeView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [StrictJSONParser]

    def state(self):
        try:
            return services.chain_state()
        except (services.ChainNotInitialized, DatabaseError) as exc:
            raise services.NodeUnavailable(str(exc)) from exc

    def body(self, request: Request):
        # Parse the raw body ourselves so a missing or wrong Content-Type still gets the strict rules.
        return parse_strict(request.body)


class StatusView(NodeView):
    @extend_schema(summary="Chain status", responses={200: OpenApiTypes.OBJECT, 503: ERRORS[503]}, tags=["chain"])
    def get(self, request: Request) -> Response:
        from chain.network import driver

        current = driver()
        answer = selectors.status(self.state(), peers=current.peers_info() if current else [])
        if current is not None:
            answer["p2p"] = current.p2p_info()
        return Response(answer)


class SubmitView(NodeView):
    throttle_classes = [ChainSubmitThrottle]

    @extend_schema(
        summary="Submit one signed transaction to the mempool",
        request=OpenApiTypes.OBJECT,
        responses={202: OpenApiTypes.OBJECT, **ERRORS},
        tags=["chain"],
    )
    def post(self, request: Request) -> Response:
        state = self.state()
        tx = self.body(request)
        [result] = services.mempool_admit(txs=[tx], chain_id=state.chain_id, min_fee=state.params["min_fee"])
        if result.error is not None:
            raise result.error
        _gossip([tx])
        return Response({"id": result.id}, status=202)


class BatchView(NodeView):
    throttle_classes = [ChainSubmitThrottle]

    @extend_schema(
        summary="Submit up to 5,000 signed transactions",
        description="Answers 200 with a list, in order, of `{id}` or `{error: {code, message}}`.",
        request=OpenApiTypes.OBJECT,
        responses={
            200: OpenApiResponse({"type": "array", "items": {"type": "object"}}, description="one result per tx"),
            400: ERRORS[400],
            429: ERRORS[429],
            503: ERRORS[503],
        },
        tags=["chain"],
    )
    def post(self, request: Request) -> Response:
        state = self.state()
        results, admitted = services.batch_admit(
            body=request.body, chain_id=state.chain_id, min_fee=state.params["min_fee"]
        )
        _gossip(admitted, submitted=request.body if len(admitted) == len(results) else None)
        return Response([r.as_dict() for r in results])


class TransactionView(NodeView):
    @extend_schema(
        summary="A transaction and its status", responses={200: OpenApiTypes.OBJECT, 404: ERRORS[404]}, tags=["chain"]
    )
    def get(self, request: Request, tx_id: str) -> Response:
        self.state()
        return Response(selectors.transaction_detail(tx_id))


class AccountView(NodeView):
    @extend_schema(
        summary="Balance and nonce of an address (0 and 0 if never seen)",
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS[400]},
        tags=["chain"],
    )
    def get(self, request: Request, address: str) -> Response:
        self.state()
        return Response(selectors.account_detail(address))


class EscrowView(NodeView):
    @extend_schema(summary="An escrow", responses={200: OpenApiTypes.OBJECT, 404: ERRORS[404]}, tags=["chain"])
    def get(self, request: Request, escrow_id: str) -> Response:
        self.state()
        return Response(selectors.escrow_detail(escrow_id))


class BlocksView(NodeView):
    @extend_schema(
        operation_id="chain_blocks_list",
        summary="Blocks from a height",
        parameters=[
            OpenApiParameter("from", int, description="first height (default 1)"),
            OpenApiParameter("limit", int, description="at most this many (default 20, at most 1000)"),
            OpenApiParameter(
                "full", int, description="1: each item is {block: {header, txs, evidence}, commit}, for block sync"
            ),
        ],
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS[400]},
        tags=["chain"],
    )
    def get(self, request: Request) -> Response:
        self.state()
        start = _query_int(request, "from", 1, 0, 2**53 - 1)
        limit = _query_int(request, "limit", 20, 1, 1000)
        if request.query_params.get("full") in ("1", "true"):
            return Response({"blocks": selectors.blocks_full_range(start, min(limit, 200))})
        return Response({"blocks": selectors.blocks_range(start, limit)})


class BlockView(NodeView):
    @extend_schema(
        summary="The block at a height", responses={200: OpenApiTypes.OBJECT, 404: ERRORS[404]}, tags=["chain"]
    )
    def get(self, request: Request, height: int) -> Response:
        self.state()
        return Response(selectors.block_detail(height))


def _gossip(txs: list, *, submitted: bytes | None = None) -> None:
    """Pass transactions admitted here on to the other nodes (admission has committed).

    ``submitted``: the body they came in, all of it admitted (``broadcast_txs``).
    """
    from chain.network import driver

    current = driver()
    # Without peers there is no one to send to, and encoding a batch costs as much as parsing it.
    if current is not None and txs and current.gossip.peers:
        current.broadcast_txs(txs, submitted=submitted)


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ProtocolError("malformed", f"query parameter {name} must be an integer in [{low}, {high}]")
    return int(raw)


class TestPartitionView(NodeView):
    """Fault injection for the process-level tests: stop gossip with the named nodes.

    Answers 404 unless the node runs with ``AITBC_TEST_HOOKS=1`` (refused in production).
    """

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        from django.conf import settings

        from chain.network import driver

        current = driver()
        if not settings.TEST_HOOKS or current is None:
            raise ProtocolError("not_found", "no such endpoint")
        body = self.body(request)
        blocked = body.get("block") if isinstance(body, dict) else None
        if not isinstance(blocked, list) or not all(type(n) is str for n in blocked):
            raise ProtocolError("malformed", "body is {block: [node ids]}")
        current.gossip.blocked_nodes = set(blocked)
        return Response({"blocked": sorted(blocked)})
