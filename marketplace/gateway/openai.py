"""OpenAI's API on the coordinator: ``POST /v1/chat/completions`` and ``GET /v1/models``.

``base_url`` is the coordinator's ``/v1``. Answers take OpenAI's shapes: one
``chat.completion``, or with ``"stream": true`` server-sent ``chat.completion.chunk``s
ending with ``data: [DONE]`` (a usage chunk before it with
``stream_options.include_usage``). A completion's ``id`` is its job's id; the final
chunk (and the one answer) also carry ``aitbc_job`` and ``aitbc_charged``. Errors are
``{"error": {"message", "type", "param", "code"}}``; a deposit that cannot pay is 402.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from aitbc_site.direct import direct
from aitbc_site.errors import ApiError
from marketplace.gateway import common, services
from marketplace.gateway.models import GatewayJob
from marketplace.gateway.streaming import Finished, GatewayStream, Token, db

_TYPES = {
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    429: "rate_limit_error",
}
_CODES = {"not_authenticated": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}
UNSUPPORTED = ("tools", "functions", "logprobs", "audio", "modalities", "prediction")


def error_body(error: ApiError) -> dict[str, Any]:
    kind = _TYPES.get(error.status) or ("server_error" if error.status >= 500 else "invalid_request_error")
    code = _CODES.get(error.code, error.code)
    return {"error": {"message": error.message, "type": kind, "param": None, "code": code}}


def error_response(error: ApiError, job_id: str | None = None) -> JsonResponse:
    return common.error_headers(JsonResponse(error_body(error), status=error.status), error, job_id)


def _generation(body: dict[str, Any]) -> tuple[services.Generation, bool, bool]:
    model = common.model_name(body)
    for name in UNSUPPORTED:
        if body.get(name):
            raise ApiError(f"{name} is not supported by this gateway", code="unsupported_parameter", status=400)
    if body.get("n") not in (None, 1):
        raise ApiError("n must be 1: one answer per request", code="unsupported_parameter", status=400)
    response_format = body.get("response_format")
    if response_format and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise ApiError("only text responses are supported", code="unsupported_parameter", status=400)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise common.malformed("stream must be true or false")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise common.malformed("stream_options must be an object")
    limit = body.get("max_completion_tokens")
    generation = services.Generation(
        model=model,
        job_input={"messages": common.messages(body.get("messages"))},
        max_tokens=common.max_tokens(body.get("max_tokens") if limit is None else limit),
        temperature=common.temperature(body.get("temperature"), 1.0),
        seed=common.seed(body.get("seed")),
        stop=common.stops(body.get("stop")),
        stream=bool(stream),
    )
    return generation, stream, bool(stream_options.get("include_usage"))


def _usage(finished: Finished) -> dict[str, int]:
    outcome = finished.outcome
    return {
        "prompt_tokens": outcome.input_tokens,
        "completion_tokens": outcome.output_tokens,
        "total_tokens": outcome.input_tokens + outcome.output_tokens,
    }


def _finish_reason(finished: Finished) -> str:
    return "length" if finished.outcome.finish_reason == "length" else "stop"


def _aitbc(finished: Finished) -> dict[str, Any]:
    return {"aitbc_job": finished.outcome.job_id, "aitbc_charged": finished.outcome.charge}


@direct
@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    received_at = time.monotonic()
    try:
        if request.method != "POST":
            raise ApiError(f"method {request.method} not allowed", code="method_not_allowed", status=405)
        key = await common.authenticate(request, None)
        generation, streaming, include_usage = _generation(common.json_body(request))
        stream = await GatewayStream.open(
            key=key, generation=generation, api=GatewayJob.OPENAI, received_at=received_at
        )
    except ApiError as exc:
        return error_response(exc)
    stream.mark("answering")
    created = int(time.time())
    base = {"id": stream.job_id, "created": created, "model": generation.model, "system_fingerprint": None}
    events = stream.events() if streaming else None
    try:
        if events is None:
            text, finished = await stream.collect()
            answer = {
                "id": stream.job_id,
                "object": "chat.completion",
                "created": created,
                "model": generation.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": _finish_reason(finished),
                    }
                ],
                "usage": _usage(finished),
                "system_fingerprint": None,
            } | _aitbc(finished)
            return common.with_job_headers(JsonResponse(answer), stream.job_id, finished.outcome.charge)
        first = await anext(events)
    except ApiError as exc:
        return error_response(exc, stream.job_id)
    except BaseException:
        stream.close()
        raise
    response = StreamingHttpResponse(_chunks(events, first, base, include_usage), content_type="text/event-stream")
    response["X-Accel-Buffering"] = "no"
    return common.with_job_headers(response, stream.job_id, common.CHARGE_PENDING)


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


async def _chunks(
    events: AsyncIterator[Token | Finished], first: Token | Finished, base: dict[str, Any], include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        body = base | {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return _sse(body | extra)

    event: Token | Finished | None = first
    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        while event is not None:
            if isinstance(event, Token):
                yield chunk({"content": event.text}, None)
            else:
                yield chunk({}, _finish_reason(event), **_aitbc(event))
                if include_usage:
                    usage = {"object": "chat.completion.chunk", "choices": [], "usage": _usage(event)}
                    yield _sse(base | usage | _aitbc(event))
                yield _sse("[DONE]")
            event = await anext(events, None)
    except ApiError as exc:
        # OpenAI's clients raise an error event met in a stream.
        yield _sse(error_body(exc))
    finally:
        await events.aclose()


def _model(offer: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": offer["model"],
        "object": "model",
        "created": int(offer["updated_at"].timestamp()),
        "owned_by": "aitbc",
        "input_price": offer["input_price"],
        "output_price": offer["output_price"],
        "context_length": offer["context_length"],
        "providers": offer["providers"],
    }


@direct
@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    """The models online providers offer, each with its lowest price (uait per 1,000 tokens)."""
    try:
        if request.method != "GET":
            raise ApiError(f"method {request.method} not allowed", code="method_not_allowed", status=405)
        await common.authenticate(request, None)
        offers = await db(services.offered_models)()
    except ApiError as exc:
        return error_response(exc)
    return JsonResponse({"object": "list", "data": [_model(offer) for offer in offers]})


@direct
@csrf_exempt
async def model(request: HttpRequest, model_id: str) -> HttpResponse:
    try:
        if request.method != "GET":
            raise ApiError(f"method {request.method} not allowed", code="method_not_allowed", status=405)
        await common.authenticate(request, None)
        offer = next((o for o in await db(services.offered_models)() if o["model"] == model_id), None)
        if offer is None:
            raise ApiError(
                f"The model '{model_id}' does not exist: no online provider offers it",
                code="model_not_found",
                status=404,
            )
    except ApiError as exc:
        return error_response(exc)
    return JsonResponse(_model(offer))
