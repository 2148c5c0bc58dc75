"""HTTP endpoints: the dashboard summary (DRF) and the Gitea webhook (plain Django).

The webhook is authenticated by its HMAC signature, not by a session, so it is
exempt from CSRF and answers errors in the shape of ``aitbc_site.errors``.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from aitbc_site.errors import ApiError, json_error
from automation import selectors, services

_WEBHOOK_HEADERS = ("X-Gitea-Signature", "X-Gitea-Delivery", "X-Gitea-Event", "X-Gitea-Event-Type")


@extend_schema(
    summary="Automation summary",
    description="Claims, PR states, the last run of each job and the last error, for the dashboard.",
    responses={200: OpenApiTypes.OBJECT},
)
@api_view(["GET"])
def automation_summary(request: Request) -> Response:
    return Response(selectors.automation_summary())


@csrf_exempt
@require_POST
def gitea_webhook(request: HttpRequest) -> JsonResponse:
    headers = {name: request.headers.get(name, "") for name in _WEBHOOK_HEADERS}
    try:
        result = services.webhook_receive(body=request.body, headers=headers)
    except ApiError as exc:
        return json_error(exc.code, exc.message, exc.status)
    return JsonResponse(result.body, status=result.status)
