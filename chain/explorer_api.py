"""The node's explorer reads: lists the dashboard's explorer needs beyond ``protocol.md``'s RPC.

Public and read-only like the rest of the RPC. The web process is not a node: its
dashboard asks the node for these over HTTP (``chain.dashboard``).
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from chain import selectors
from chain.api import ERRORS, NodeView, _query_int

TAGS = ["chain explorer"]


class RecentTransactionsView(NodeView):
    @extend_schema(
        summary="The newest committed transactions, or the mempool",
        parameters=[
            OpenApiParameter("limit", int, description="at most this many (default 25, at most 200)"),
            OpenApiParameter("status", str, description="`pending`: the mempool, oldest first"),
        ],
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS[400], 503: ERRORS[503]},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        self.state()
        limit = _query_int(request, "limit", 25, 1, 200)
        if request.query_params.get("status") == "pending":
            return Response({"transactions": selectors.pending_transactions(limit)})
        return Response({"transactions": selectors.recent_transactions(limit)})


class AccountTransactionsView(NodeView):
    @extend_schema(
        summary="Transactions sent by or paying an address, newest first",
        parameters=[OpenApiParameter("limit", int, description="at most this many (default 50, at most 500)")],
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS[400], 503: ERRORS[503]},
        tags=TAGS,
    )
    def get(self, request: Request, address: str) -> Response:
        self.state()
        limit = _query_int(request, "limit", 50, 1, 500)
        return Response({"address": address, "transactions": selectors.account_transactions(address, limit)})


class EscrowListView(NodeView):
    @extend_schema(
        summary="Escrows of a payer or a job label, newest first",
        parameters=[
            OpenApiParameter("payer", str, description="the paying address"),
            OpenApiParameter("job_id", str, description="the label the escrow_lock carried"),
            OpenApiParameter("limit", int, description="at most this many (default 50, at most 500)"),
        ],
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS[400], 503: ERRORS[503]},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        self.state()
        limit = _query_int(request, "limit", 50, 1, 500)
        escrows = selectors.escrow_list(
            payer=request.query_params.get("payer") or None,
            job_id=request.query_params.get("job_id") or None,
            limit=limit,
        )
        return Response({"escrows": escrows})


class StatsView(NodeView):
    @extend_schema(
        summary="Blocks, transactions and block intervals per time bucket",
        parameters=[
            OpenApiParameter("window", int, description="seconds to look back (default 3600, at most 86400)"),
            OpenApiParameter("bucket", int, description="seconds per bucket (default 60, at least window/1000)"),
        ],
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS[400], 503: ERRORS[503]},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        state = self.state()
        window = _query_int(request, "window", 3600, 10, 86_400)
        bucket = _query_int(request, "bucket", 60, max(1, window // 1000), window)
        return Response(selectors.block_stats(state, window_s=window, bucket_s=bucket))


class SearchView(NodeView):
    @extend_schema(
        summary="What a height, transaction id, block id, address or escrow job label names",
        parameters=[OpenApiParameter("q", str, required=True)],
        responses={200: OpenApiTypes.OBJECT, 404: ERRORS[404], 503: ERRORS[503]},
        tags=TAGS,
    )
    def get(self, request: Request) -> Response:
        from chain.protocol.errors import ProtocolError

        self.state()
        found = selectors.explorer_search(request.query_params.get("q", ""))
        if found is None:
            raise ProtocolError("not_found", "nothing on this chain answers to that")
        return Response(found)
