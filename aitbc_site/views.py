from __future__ import annotations

import secrets
import time

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from aitbc_site import tasks


@extend_schema(
    summary="Round trip through the task queue and the live-event websocket",
    description=(
        "Queues a task; a Celery worker runs it and sends a `ping` event with the returned token "
        "to the caller's `/ws/events/` websocket. Lets operators and tests check that the broker, "
        "the workers and the channel layer all work together."
    ),
    request=None,
    responses={202: inline_serializer("PingQueued", {"token": serializers.CharField()})},
)
@api_view(["POST"])
def system_ping(request: Request) -> Response:
    token = secrets.token_hex(8)
    user_id = request.user.pk
    transaction.on_commit(lambda: tasks.ping.delay(user_id, token, time.time()))
    return Response({"token": token}, status=202)
