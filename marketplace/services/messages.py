"""The messages a provider sends about its jobs (docs/marketplace.md), over a websocket or
``POST /v1/providers/jobs/{id}/events``: one handler for both transports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aitbc_site.errors import ApiError
from aitbc_site.events import send_event_on_commit, user_group
from chain.protocol.encoding import is_int
from marketplace.models import Job
from marketplace.services import dispatch, providers, settlement

MAX_REASON = 300
MAX_CHUNK_CHARS = 100_000


def _malformed(message: str) -> ApiError:
    return ApiError(message, code="malformed")


def _text(message: dict[str, Any], name: str, limit: int) -> str:
    value = message.get(name)
    if type(value) is not str:
        raise _malformed(f"{message.get('type')}: {name} must be a string")
    return value[:limit]


def provider_message(
    *,
    provider: str,
    message: Any,
    job_id: str | None = None,
    received_at: datetime | None = None,
    seen: bool = True,
) -> dict[str, Any]:
    """Apply one message from ``provider``; what the job became (for the HTTP answer).

    ``job_id`` is the job of the URL (HTTP); a message's own ``job_id`` must agree with it.
    ``received_at``: when the message arrived (an accepted job started then). ``seen=False``:
    the caller recorded the provider's presence less than ``providers.SEEN_RESOLUTION`` ago.
    Raises ``ApiError``: ``malformed``, ``not_found``, ``not_assigned`` (the provider lost
    or never had the job; a late result is refused) or ``receipt_refused``.
    """
    if not isinstance(message, dict) or type(message.get("type")) is not str:
        raise _malformed("a provider message is a JSON object with a type")
    kind = message["type"]
    if kind == "heartbeat":
        active = message.get("active")
        if not is_int(active):
            raise _malformed("heartbeat: active must be an integer")
        providers.provider_seen(address=provider, active=active)
        return {}
    if seen:
        providers.provider_seen(address=provider)
    given = message.get("job_id", job_id)
    if type(given) is not str or (job_id is not None and given != job_id):
        raise _malformed(f"{kind}: job_id must be the job's id (a string)")
    if kind == "accepted":
        state = dispatch.provider_accepted(provider=provider, job_id=given, at=received_at)
        return {"job_id": given, "state": state}
    elif kind == "rejected":
        dispatch.provider_rejected(provider=provider, job_id=given, reason=_text(message, "reason", MAX_REASON))
    elif kind == "failed":
        dispatch.provider_failed(provider=provider, job_id=given, reason=_text(message, "reason", MAX_REASON))
    elif kind == "chunk":
        _forward_chunk(provider, given, message)
    elif kind == "result":
        signed = {"receipt": message.get("receipt"), "signature": message.get("signature")}
        outcome = settlement.provider_result(
            provider=provider, job_id=given, output=message.get("output"), signed_receipt=signed
        )
        if not outcome.accepted:
            raise ApiError(f"receipt refused: {outcome.problem}", code="receipt_refused", status=409)
        return {"job_id": given, "state": outcome.state, "charge": outcome.charge}
    else:
        raise _malformed(f"unknown message type {kind!r}")
    return {"job_id": given, "state": Job.objects.filter(pk=given).values_list("state", flat=True).first()}


def _forward_chunk(provider: str, job_id: str, message: dict[str, Any]) -> None:
    index, text = message.get("index"), _text(message, "text", MAX_CHUNK_CHARS)
    if not is_int(index):
        raise _malformed("chunk: index must be an integer")
    row = Job.objects.filter(pk=job_id).values("provider_id", "state", "owner_id").first()
    if row is None:
        raise ApiError("no such job", code="not_found", status=404)
    if row["provider_id"] != provider or row["state"] not in Job.IN_FLIGHT:
        raise dispatch.NotAssigned(f"job {job_id} is not assigned to you (any more)")
    # Chunks are streamed to the job's owner as they come, not stored: the result carries the whole text.
    if row["owner_id"] is not None:
        send_event_on_commit(
            user_group(row["owner_id"]), {"type": "job.chunk", "job_id": job_id, "index": index, "text": text}
        )
