"""Ollama's API on the coordinator: ``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/show``, ``/api/version``.

Served at the root and under ``/k/<key>/`` (for clients that cannot send headers:
``OLLAMA_HOST=http://host:8000/k/<key>``). Answers take Ollama's shapes: NDJSON lines
while streaming (the default), one JSON object with ``"stream": false``, the last one
with ``done``, ``done_reason``, the token counts and durations in nanoseconds, and
``aitbc_job`` / ``aitbc_charged`` (the ``X-AITBC-*`` headers of the answer, repeated
where a stream has room for them). Errors are ``{"error": "<message>"}`` with the status.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from aitbc_site.direct import direct
from aitbc_site.errors import ApiError
from marketplace.gateway import common, conf, services
from marketplace.gateway.models import GatewayJob
from marketplace.gateway.streaming import Finished, GatewayStream, Token, db

NS = 1_000_000_000
NDJSON = "application/x-ndjson"


def now_rfc3339() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


def error_response(error: ApiError, job_id: str | None = None) -> JsonResponse:
    response = JsonResponse({"error": error.message}, status=error.status)
    return common.error_headers(response, error, job_id)


def _method(request: HttpRequest, *allowed: str) -> None:
    if request.method not in allowed:
        raise ApiError(f"method {request.method} not allowed", code="method_not_allowed", status=405)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise common.malformed("options must be an object")
    return options


def _generation(body: dict[str, Any], *, chat: bool) -> tuple[services.Generation, bool]:
    model = common.model_name(body)
    if body.get("tools"):
        raise common.malformed(f"{model} does not support tools")
    if body.get("images") or body.get("format"):
        raise common.malformed("images and structured output (format) are not supported")
    options = _options(body)
    if chat:
        job_input: dict[str, Any] = {"messages": common.messages(body.get("messages"))}
    else:
        prompt = common.text(body.get("prompt", ""), "prompt")
        system = body.get("system")
        if system:
            job_input = {
                "messages": [
                    {"role": "system", "content": common.text(system, "system")},
                    {"role": "user", "content": prompt},
                ]
            }
        else:
            job_input = {"prompt": prompt}
    num_predict = options.get("num_predict")
    if type(num_predict) is int and num_predict < 0:  # -1: until the model stops (-2: fill the context)
        num_predict = None
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise common.malformed("stream must be true or false")
    generation = services.Generation(
        model=model,
        job_input=job_input,
        max_tokens=common.max_tokens(num_predict, "options.num_predict"),
        temperature=common.temperature(options.get("temperature"), 0.8),
        seed=common.seed(options.get("seed")),
        stop=common.stops(options.get("stop")),
        stream=stream,
    )
    return generation, stream


def _final(*, chat: bool, model: str, finished: Finished, received_at: float, text: str = "") -> dict[str, Any]:
    outcome = finished.outcome
    ended = time.monotonic()
    first = finished.first_token_at or ended
    load = max(0.0, (outcome.started_at - outcome.created_at).total_seconds())
    body: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if chat:
        body["message"] = {"role": "assistant", "content": text}
    else:
        body["response"] = text
    body |= {
        "done": True,
        "done_reason": "length" if outcome.finish_reason == "length" else "stop",
        "total_duration": int((ended - received_at) * NS),
        "load_duration": int(load * NS),
        "prompt_eval_count": outcome.input_tokens,
        "prompt_eval_duration": int(max(0.0, first - received_at - load) * NS),
        "eval_count": outcome.output_tokens,
        "eval_duration": int(max(0.0, ended - first) * NS),
        "aitbc_job": outcome.job_id,
        "aitbc_charged": outcome.charge,
    }
    return body


async def _run(request: HttpRequest, key: str | None, *, chat: bool) -> HttpResponse:
    received_at = time.monotonic()
    try:
        _method(request, "POST")
        api_key = await common.authenticate(request, key)
        body = common.json_body(request)
        generation, streaming = _generation(body, chat=chat)
        if not chat and generation.job_input.get("prompt") == "":
            # An empty prompt only loads the model in Ollama: nothing to run, nothing to charge.
            if not await db(_offered)(generation.model):
                raise services.model_not_found(generation.model)
            loaded = {"model": generation.model, "created_at": now_rfc3339(), "response": "", "done": True}
            return common.with_job_headers(JsonResponse(loaded | {"done_reason": "load"}), None, 0)
        stream = await GatewayStream.open(
            key=api_key, generation=generation, api=GatewayJob.OLLAMA, received_at=received_at
        )
    except ApiError as exc:
        return error_response(exc)
    model = generation.model
    events = stream.events() if streaming else None
    try:
        if events is None:
            text, finished = await stream.collect()
            answer = _final(chat=chat, model=model, finished=finished, received_at=received_at, text=text)
            return common.with_job_headers(JsonResponse(answer), stream.job_id, finished.outcome.charge)
        # The status goes out with the first token: until then an error is still a proper error answer.
        first = await anext(events)
    except ApiError as exc:
        return error_response(exc, stream.job_id)
    except BaseException:
        stream.close()
        raise
    response = StreamingHttpResponse(
        _lines(events, first, chat=chat, model=model, received_at=received_at), content_type=NDJSON
    )
    return common.with_job_headers(response, stream.job_id, common.CHARGE_PENDING)


async def _lines(
    events: AsyncIterator[Token | Finished], first: Token | Finished, *, chat: bool, model: str, received_at: float
) -> AsyncIterator[bytes]:
    event: Token | Finished | None = first
    try:
        while event is not None:
            if isinstance(event, Token):
                line: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
                if chat:
                    line["message"] = {"role": "assistant", "content": event.text}
                else:
                    line["response"] = event.text
                line["done"] = False
            else:
                line = _final(chat=chat, model=model, finished=event, received_at=received_at)
            yield json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n"
            event = await anext(events, None)
    except ApiError as exc:
        # Ollama's way to end a stream that broke: a line holding the error.
        yield json.dumps({"error": exc.message}, ensure_ascii=False).encode("utf-8") + b"\n"
    finally:
        await events.aclose()


def _offered(model: str) -> bool:
    return services.online_offers().filter(model=model).exists()


@direct
@csrf_exempt
async def chat(request: HttpRequest, key: str | None = None) -> HttpResponse:
    return await _run(request, key, chat=True)


@direct
@csrf_exempt
async def generate(request: HttpRequest, key: str | None = None) -> HttpResponse:
    return await _run(request, key, chat=False)


def _model_entry(offer: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": offer["model"],
        "model": offer["model"],
        "modified_at": offer["updated_at"].isoformat().replace("+00:00", "Z"),
        "size": 0,
        "digest": "",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": offer["model"].split(":", 1)[0],
            "families": None,
            "parameter_size": offer["model"].split(":", 1)[1] if ":" in offer["model"] else "",
            "quantization_level": "",
        },
        # The marketplace's own: the lowest price (uait per 1,000 tokens) and how many providers offer it.
        "input_price": offer["input_price"],
        "output_price": offer["output_price"],
        "context_length": offer["context_length"],
        "providers": offer["providers"],
    }


@direct
@csrf_exempt
async def tags(request: HttpRequest, key: str | None = None) -> HttpResponse:
    """The models online providers offer, each with its lowest price."""
    try:
        _method(request, "GET", "HEAD")
        await common.authenticate(request, key)
        offers = await db(services.offered_models)()
    except ApiError as exc:
        return error_response(exc)
    return JsonResponse({"models": [_model_entry(offer) for offer in offers]})


@direct
@csrf_exempt
async def show(request: HttpRequest, key: str | None = None) -> HttpResponse:
    try:
        _method(request, "POST")
        await common.authenticate(request, key)
        body = common.json_body(request)
        name = body.get("model") or body.get("name")
        model = common.model_name({"model": name})
        offer = next((o for o in await db(services.offered_models)() if o["model"] == model), None)
        if offer is None:
            raise services.model_not_found(model)
    except ApiError as exc:
        return error_response(exc)
    entry = _model_entry(offer)
    return JsonResponse(
        {
            "license": "",
            "modelfile": f"FROM {model}\n",
            "parameters": f"num_ctx {offer['context_length']}",
            "template": "",
            "details": entry["details"],
            "model_info": {
                "general.architecture": entry["details"]["family"],
                "context_length": offer["context_length"],
            },
            "capabilities": ["completion"],
            "modified_at": entry["modified_at"],
            "input_price": offer["input_price"],
            "output_price": offer["output_price"],
        }
    )


@direct
@csrf_exempt
async def version(request: HttpRequest, key: str | None = None) -> HttpResponse:
    return JsonResponse({"version": conf.OLLAMA_VERSION})


@direct
@csrf_exempt
async def root(request: HttpRequest, key: str | None = None) -> HttpResponse:
    """``GET /k/<key>/``: what Ollama answers at its root, for clients that check the server is up."""
    return HttpResponse("Ollama is running", content_type="text/plain; charset=utf-8")
