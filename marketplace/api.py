"""REST endpoints of the coordinator (docs/marketplace.md for providers, docs/api.md for clients).

Thin views: input serializers check shapes, services and selectors do the work, and
``MarketAPIView.handle_exception`` is the one place node and wallet errors become
``ApiError`` answers (``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aitbc_site.errors import ApiError
from aitbc_site.throttling import JobSubmitThrottle
from chain.api import StrictJSONParser
from chain.client import ChainUnavailable
from marketplace import conf, selectors
from marketplace import serializers as s
from marketplace.auth import (
    CLIENT_AUTHENTICATION_CLASSES,
    JOB_TOKEN_HEADER,
    IsProvider,
    ProviderTokenAuthentication,
    PublicRateThrottle,
    job_token,
)
from marketplace.models import Job, Provider
from marketplace.services import deposits, dispatch, jobs, messages, providers

logger = logging.getLogger("aitbc.marketplace.api")

NODE_UNAVAILABLE = "the chain node is unavailable; try again later"
# A waiting long poll looks for its job this often even when no wake-up message comes.
POLL_RECHECK_S = 1.0

TAG_JOBS, TAG_PROVIDERS, TAG_DEPOSITS = "marketplace: jobs", "marketplace: providers", "marketplace: deposits"


def _errors(**descriptions: str) -> dict[int, OpenApiResponse]:
    """Documented error answers: ``_errors(e400="...", e409="...")``."""
    return {int(name[1:]): OpenApiResponse(s.ErrorSerializer, description=text) for name, text in descriptions.items()}


E400 = "malformed (the message says which field), or a protocol error of the escrow"
E401_PROVIDER = "not_authenticated: missing or unknown provider token"
E403_LOGIN = "not_authenticated: log in"
E404 = "not_found (someone else's is not found either)"
E503 = "node_unavailable: the chain node cannot be reached"


def to_api_error(exc: Exception) -> Exception:
    if isinstance(exc, ChainUnavailable):
        # The detail names internal URLs: it goes to the log, not to the caller.
        logger.warning("chain node unavailable: %s", exc)
        return ApiError(NODE_UNAVAILABLE, code="node_unavailable", status=503)
    from wallet.api import to_api_error as wallet_error
    from wallet.errors import WalletError

    if isinstance(exc, WalletError):
        return wallet_error(exc)
    return exc


class MarketAPIView(APIView):
    authentication_classes = CLIENT_AUTHENTICATION_CLASSES
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]

    def handle_exception(self, exc: Exception) -> Response:
        return super().handle_exception(to_api_error(exc))


class PublicAPIView(MarketAPIView):
    permission_classes = [AllowAny]
    throttle_classes = [PublicRateThrottle]


class ProviderAPIView(MarketAPIView):
    authentication_classes = [ProviderTokenAuthentication]
    permission_classes = [IsProvider]
    # Providers speak the protocol: strict JSON (no floats, no duplicate keys).
    parser_classes = [StrictJSONParser]

    @property
    def provider(self) -> Provider:
        return self.request.auth


class AsyncProviderAPIView(ProviderAPIView):
    """A provider endpoint whose handler is a coroutine (the long poll waits without a thread).

    DRF's dispatch is synchronous; this runs its steps with the blocking ones
    (authentication reads the database) in a thread, and awaits the handler.
    """

    async def dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await sync_to_async(self.initial)(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), self.http_method_not_allowed)
            response = handler(request, *args, **kwargs)
            if asyncio.iscoroutine(response):
                response = await response
        except Exception as exc:
            response = await sync_to_async(self.handle_exception)(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


def _valid(serializer_class, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# -- coordinator -------------------------------------------------------------------------------


class CoordinatorView(PublicAPIView):
    @extend_schema(
        operation_id="coordinator_retrieve",
        tags=[TAG_PROVIDERS],
        responses={200: s.CoordinatorSerializer, **_errors(e429="rate_limited", e503=E503)},
    )
    def get(self, request: Request) -> Response:
        """The coordinator's chain address (the arbiter of job escrows), its chain and escrow rules."""
        return Response(selectors.coordinator_info())


# -- providers ---------------------------------------------------------------------------------


class ProviderRegisterView(PublicAPIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="providers_register",
        tags=[TAG_PROVIDERS],
        request=s.RegisterInput,
        responses={
            200: s.RegisteredSerializer,
            **_errors(
                e400="malformed offers or fields",
                e401="authentication_refused: the signed auth does not verify, is addressed to another "
                "coordinator, is too old, or was used already (replayed)",
                e429="rate_limited",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Register a provider (authenticated by its signed body); its offers replace its previous ones."""
        body = request.data
        if not isinstance(body, dict):
            raise ApiError("the body is a JSON object", code="malformed")
        extra = set(body) - {"auth", "signature", "name", "url", "offers"}
        if extra:
            raise ApiError(f"unknown fields: {', '.join(sorted(extra))}", code="malformed")
        data = _valid(s.RegisterInput, request)
        registration = providers.provider_register(
            signed_auth={"auth": data["auth"], "signature": data["signature"]},
            name=data["name"],
            url=data["url"],
            offers=data["offers"],
        )
        return Response({"provider": registration.provider.address, "token": registration.token})


class ProviderPollView(AsyncProviderAPIView):
    @extend_schema(
        operation_id="providers_poll",
        tags=[TAG_PROVIDERS],
        request=None,
        responses={
            200: s.JobWireSerializer,
            204: OpenApiResponse(description="no job came within the wait"),
            **_errors(e401=E401_PROVIDER),
        },
    )
    async def post(self, request: Request) -> Response:
        """Long poll: wait up to 25 s for a job assigned to you (for providers without a websocket)."""
        address = self.provider.address
        await sync_to_async(providers.provider_seen)(address=address, force=True)
        job = await sync_to_async(dispatch.poll_claim)(provider=address)
        if job is None:
            job = await _wait_for_job(address)
        if job is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response({"job": job})


async def _wait_for_job(address: str) -> dict[str, Any] | None:
    """Wait on the provider's channel-layer group (dispatch sends there) and recheck the database."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + conf.POLL_WAIT_S
    layer = get_channel_layer()
    group = providers.provider_group(address)
    channel = await layer.new_channel("poll.") if layer is not None else None
    if channel is not None:
        await layer.group_add(group, channel)
    try:
        while (remaining := deadline - loop.time()) > 0:
            step = min(POLL_RECHECK_S, remaining)
            if channel is not None:
                try:
                    await asyncio.wait_for(layer.receive(channel), step)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(step)
            # Waiting in a poll is being online.
            await sync_to_async(providers.provider_seen)(address=address)
            job = await sync_to_async(dispatch.poll_claim)(provider=address)
            if job is not None:
                return job
        return None
    finally:
        if channel is not None:
            await layer.group_discard(group, channel)


class ProviderJobEventsView(ProviderAPIView):
    @extend_schema(
        operation_id="providers_job_events",
        tags=[TAG_PROVIDERS],
        request=OpenApiTypes.OBJECT,
        responses={
            200: s.ProviderEventAnswerSerializer,
            **_errors(
                e400="malformed message",
                e401=E401_PROVIDER,
                e404="not_found: no such job",
                e409="not_assigned (you lost the job or never had it: a late result is refused), "
                "or receipt_refused (you are not paid; the job goes to another provider)",
            ),
        },
    )
    def post(self, request: Request, job_id: str) -> Response:
        """One provider message about a job: accepted, rejected, chunk, result or failed (docs/marketplace.md)."""
        answer = messages.provider_message(provider=self.provider.address, message=request.data, job_id=job_id)
        return Response(answer)


class ProviderHeartbeatView(ProviderAPIView):
    @extend_schema(
        operation_id="providers_heartbeat",
        tags=[TAG_PROVIDERS],
        request=s.HeartbeatInput,
        responses={200: s.ProviderAckSerializer, **_errors(e400="malformed", e401=E401_PROVIDER)},
    )
    def post(self, request: Request) -> Response:
        """Say you are alive (every 10 s; silent for 30 s you are offline and lose your jobs)."""
        data = _valid(s.HeartbeatInput, request)
        providers.provider_seen(address=self.provider.address, active=data["active"])
        return Response({"provider": self.provider.address})


class ProviderListView(PublicAPIView):
    @extend_schema(
        operation_id="providers_list",
        tags=[TAG_PROVIDERS],
        responses={200: s.ProviderSerializer(many=True), **_errors(e429="rate_limited")},
    )
    def get(self, request: Request) -> Response:
        """Every registered provider: presence, reputation (from recorded outcomes) and offers."""
        return Response(s.ProviderSerializer(selectors.provider_list(), many=True).data)


class OfferListView(PublicAPIView):
    @extend_schema(
        operation_id="offers_list",
        tags=[TAG_PROVIDERS],
        parameters=[
            OpenApiParameter("model", str, description="only offers for this model"),
            OpenApiParameter("online", bool, description="only offers of providers online now"),
        ],
        responses={200: s.OfferSerializer(many=True), **_errors(e429="rate_limited")},
    )
    def get(self, request: Request) -> Response:
        """Current offers, cheapest first per model (prices in uait per 1,000 tokens)."""
        rows = selectors.offer_list(
            model=request.query_params.get("model") or None,
            online_only=request.query_params.get("online", "").lower() in ("1", "true", "yes"),
        )
        return Response(s.OfferSerializer(rows, many=True).data)


# -- jobs --------------------------------------------------------------------------------------


def _job_answer(job: Job, **extra: Any) -> dict[str, Any]:
    job = Job.objects.prefetch_related("events").get(pk=job.pk)
    return s.JobDetailSerializer(selectors.job_detail(job)).data | extra


JOB_TOKEN_PARAMETER = OpenApiParameter(
    JOB_TOKEN_HEADER, str, OpenApiParameter.HEADER, description="anonymous submissions: the job token"
)


class JobListCreateView(MarketAPIView):
    throttle_classes = [PublicRateThrottle, JobSubmitThrottle]

    def get_permissions(self):
        # Anyone may submit a job paid by their own escrow; reading the list needs a login.
        return [AllowAny()] if self.request.method == "POST" else [IsAuthenticated()]

    @extend_schema(
        operation_id="jobs_list",
        tags=[TAG_JOBS],
        parameters=[
            OpenApiParameter("state", str, description="comma-separated states (default: the active ones)"),
            OpenApiParameter("model", str),
            OpenApiParameter("limit", int, description="at most 500 (default 100)"),
            OpenApiParameter("offset", int),
        ],
        responses={200: s.JobSummarySerializer(many=True), **_errors(e400="malformed", e403=E403_LOGIN)},
    )
    def get(self, request: Request) -> Response:
        """Your active jobs, newest first (staff see everyone's); filter by state and model."""
        raw_states = request.query_params.get("state", "")
        states = [state for state in raw_states.split(",") if state] if raw_states else None
        known = {value for value, _ in Job.STATES}
        if states and not set(states) <= known:
            raise ApiError(f"state must be among {', '.join(sorted(known))}", code="malformed")
        limit, offset = _int_param(request, "limit", 100, 1, 500), _int_param(request, "offset", 0, 0, 10**9)
        rows = selectors.job_list(user=request.user, states=states, model=request.query_params.get("model"))
        return Response(
            s.JobSummarySerializer([selectors.job_summary(j) for j in rows[offset : offset + limit]], many=True).data
        )

    @extend_schema(
        operation_id="jobs_create",
        tags=[TAG_JOBS],
        request=s.JobCreateInput,
        responses={
            202: s.SubmittedJobSerializer,
            **_errors(
                e400=E400 + "; wrong_arbiter, escrow_too_small, timeout_too_short",
                e403="not_authenticated (wallet and deposit payments need a login), wrong_password",
                e404="not_found: no such wallet or deposit among yours",
                e409="no_eligible_offer (no online provider can run it under max_price: nothing was locked), "
                "escrow_used, insufficient_funds, bad_nonce, duplicate, deposit_not_open, insufficient_deposit, "
                "deposit_expiring",
                e429="rate_limited",
                e503=E503,
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Submit a job with its payment: your signed escrow_lock, a stored wallet, or a deposit.

        Paid by escrow, the job is ``submitted`` until the escrow commits; paid from a
        deposit it is ``funded`` at once. Anonymous clients pay by escrow_tx and get a
        ``token`` to read and cancel the job with (header ``X-AITBC-Job-Token``).
        """
        data = _valid(s.JobCreateInput, request)
        job_input = {"prompt": data["prompt"]} if "prompt" in data else {"messages": data["messages"]}
        job_request = jobs.JobRequest(
            model=data["model"],
            job_input=job_input,
            max_tokens=data["max_tokens"],
            max_price=data["max_price"],
            temperature_milli=round(data.get("temperature", 0) * 1000),
            seed=data.get("seed"),
            stop=data.get("stop", []),
        )
        pay = data["payment"]
        payment = jobs.Payment(
            escrow_tx=pay.get("escrow_tx"),
            wallet=pay.get("wallet"),
            password=pay.get("password"),
            deposit=pay.get("deposit"),
        )
        submitted = jobs.job_submit(owner=request.user, request=job_request, payment=payment)
        return Response(_job_answer(submitted.job, token=submitted.token), status=status.HTTP_202_ACCEPTED)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(f"{name} must be an integer in [{low}, {high}]", code="malformed")
    return int(raw)


class JobView(MarketAPIView):
    permission_classes = [AllowAny]  # the owner, staff, or the holder of the job token (selectors.job_get)

    def job(self, job_id: str) -> Job:
        return selectors.job_get(job_id=job_id, user=self.request.user, token=job_token(self.request))


class JobDetailView(JobView):
    @extend_schema(
        operation_id="jobs_retrieve",
        tags=[TAG_JOBS],
        parameters=[JOB_TOKEN_PARAMETER],
        responses={200: s.JobDetailSerializer, **_errors(e404=E404)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        """A job: its state, history (each state with its time and reason), output and charges."""
        return Response(_job_answer(self.job(job_id)))


class JobCancelView(JobView):
    @extend_schema(
        operation_id="jobs_cancel",
        tags=[TAG_JOBS],
        parameters=[JOB_TOKEN_PARAMETER],
        request=s.CancelInput,
        responses={
            200: s.JobDetailSerializer,
            **_errors(e400="malformed: the body", e404=E404, e409="not_cancellable: it completed or ended"),
        },
    )
    def post(self, request: Request, job_id: str) -> Response:
        """Cancel a job that has not completed; what it locked comes back (a running job's work done is paid)."""
        job = self.job(job_id)
        data = _valid(s.CancelInput, request)
        job = jobs.job_cancel(job_id=job.id, reason=data.get("reason") or "cancelled by its client")
        return Response(_job_answer(job))


class JobReceiptView(JobView):
    @extend_schema(
        operation_id="jobs_receipt",
        tags=[TAG_JOBS],
        parameters=[JOB_TOKEN_PARAMETER],
        responses={200: s.SignedReceiptSerializer, **_errors(e404=E404 + ", or no receipt yet")},
    )
    def get(self, request: Request, job_id: str) -> Response:
        """The provider's signed receipt of the paid run (anyone can verify it with the provider's key)."""
        job = self.job(job_id)
        if job.receipt is None:
            raise ApiError(f"job {job.id} has no accepted receipt (it is {job.state})", code="not_found", status=404)
        return Response(job.receipt)


class JobRejectView(JobView):
    @extend_schema(
        operation_id="jobs_reject",
        tags=[TAG_JOBS],
        parameters=[JOB_TOKEN_PARAMETER],
        request=s.DisputeInput,
        responses={
            200: s.JobDetailSerializer,
            **_errors(
                e400="malformed: a reason is required",
                e404=E404,
                e409="not_disputable, already_disputed, dispute_window_closed",
            ),
        },
    )
    def post(self, request: Request, job_id: str) -> Response:
        """Dispute a completed job's result, with a reason: it counts against the provider's reputation.

        The payment stands: the signed receipt shows the metered work was done.
        """
        job = self.job(job_id)
        data = _valid(s.DisputeInput, request)
        return Response(_job_answer(jobs.job_dispute(job_id=job.id, reason=data["reason"])))


# -- deposits ------------------------------------------------------------------------------------


class DepositListCreateView(MarketAPIView):
    @extend_schema(
        operation_id="deposits_list",
        tags=[TAG_DEPOSITS],
        responses={200: s.DepositSerializer(many=True), **_errors(e403=E403_LOGIN)},
    )
    def get(self, request: Request) -> Response:
        """Your deposits and their books."""
        rows = [selectors.deposit_detail(d) for d in selectors.deposit_list(user=request.user)]
        return Response(s.DepositSerializer(rows, many=True).data)

    @extend_schema(
        operation_id="deposits_create",
        tags=[TAG_DEPOSITS],
        request=s.DepositCreateInput,
        responses={
            202: s.DepositSerializer,
            **_errors(
                e400=E400 + "; wrong_arbiter, timeout_too_short",
                e403=E403_LOGIN + ", or wrong_password",
                e404="not_found: no such wallet among yours",
                e409="escrow_used, insufficient_funds, bad_nonce, duplicate",
                e503=E503,
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Lock a larger escrow once; jobs paid ``{"deposit": id}`` then draw on it without waiting for a block."""
        data = _valid(s.DepositCreateInput, request)
        deposit = deposits.deposit_open(
            owner=request.user,
            escrow_tx=data.get("escrow_tx"),
            wallet=data.get("wallet"),
            password=data.get("password"),
            amount=data.get("amount"),
            timeout_blocks=data.get("timeout_blocks"),
        )
        return Response(s.DepositSerializer(selectors.deposit_detail(deposit)).data, status=status.HTTP_202_ACCEPTED)


class DepositDetailView(MarketAPIView):
    @extend_schema(
        operation_id="deposits_retrieve",
        tags=[TAG_DEPOSITS],
        responses={200: s.DepositSerializer, **_errors(e403=E403_LOGIN, e404=E404)},
    )
    def get(self, request: Request, deposit_id: str) -> Response:
        """A deposit and its books (after each payout, ``paid`` equals the escrow's ``paid`` on the chain)."""
        deposit = selectors.deposit_get(deposit_id=deposit_id, user=request.user)
        return Response(s.DepositSerializer(selectors.deposit_detail(deposit)).data)


class DepositCloseView(MarketAPIView):
    @extend_schema(
        operation_id="deposits_close",
        tags=[TAG_DEPOSITS],
        request=None,
        responses={200: s.DepositSerializer, **_errors(e403=E403_LOGIN, e404=E404)},
    )
    def post(self, request: Request, deposit_id: str) -> Response:
        """Close a deposit: no new jobs; once those in flight end, providers are paid and the rest refunded."""
        deposit = selectors.deposit_get(deposit_id=deposit_id, user=request.user)
        deposit = deposits.close(deposit_id=deposit.pk, owner_id=None, reason="closed by its owner")
        return Response(s.DepositSerializer(selectors.deposit_detail(deposit)).data)
