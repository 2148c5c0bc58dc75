"""What both APIs share: who is calling, reading request bodies, and the headers of every answer."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from rest_framework import serializers as drf_serializers

from aitbc_site.errors import ApiError
from chain.protocol.encoding import MAX_INT
from marketplace.gateway import keys
from marketplace.gateway.models import ApiKey
from marketplace.gateway.streaming import db
from marketplace.serializers import MAX_MESSAGES, MAX_PROMPT_CHARS, MAX_TOKENS, ROLES, check_text

JOB_HEADER = "X-AITBC-Job"
CHARGED_HEADER = "X-AITBC-Charged"
# A stream's headers leave before its charge is known: the final chunk carries it.
CHARGE_PENDING = "pending"
MAX_STOPS = 8


def malformed(message: str) -> ApiError:
    return ApiError(message, code="malformed", status=400)


async def authenticate(request: HttpRequest, path_key: str | None) -> ApiKey:
    """The caller's key, from ``Authorization: Bearer`` or the ``/k/<key>/`` path; 401 or 429 ``ApiError``."""
    secret = keys.bearer_secret(request.headers.get("Authorization", ""))
    if secret is None or (path_key and not keys.looks_like_key(secret)):
        secret = path_key
    if not secret:
        raise keys.not_authenticated("an API key is required: send Authorization: Bearer <key>")
    key = await db(keys.key_for_secret)(secret)
    keys.rate_check(key)
    return key


def json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise malformed("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise malformed("the body must be a JSON object")
    return body


def text(value: Any, what: str, *, limit: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(value, str):
        raise malformed(f"{what} must be a string")
    if len(value) > limit:
        raise malformed(f"{what} is longer than {limit} characters")
    try:
        return check_text(value, what)
    except drf_serializers.ValidationError as exc:
        raise malformed(str(exc.detail[0])) from None


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise malformed("model is required")
    return text(model.strip(), "model", limit=200)


def message_content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of parts where only text parts are supported."""
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise malformed(f"{where}: only text content is supported")
            texts.append(text(part.get("text"), f"{where}.text"))
        return "".join(texts)
    return text(content, f"{where}.content")


def messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise malformed("messages must be a non-empty list")
    if len(raw) > MAX_MESSAGES:
        raise malformed(f"at most {MAX_MESSAGES} messages")
    parsed = []
    for number, message in enumerate(raw):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise malformed(f"{where} must be an object")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise malformed(f"{where}.role must be one of {', '.join(ROLES)}")
        if message.get("images") or message.get("tool_calls"):
            raise malformed(f"{where}: images and tool calls are not supported")
        parsed.append({"role": role, "content": message_content(message.get("content"), where)})
    if sum(len(m["content"]) for m in parsed) > MAX_PROMPT_CHARS:
        raise malformed(f"the input is longer than {MAX_PROMPT_CHARS} characters")
    return parsed


def stops(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or len(values) > MAX_STOPS:
        raise malformed(f"stop must be a string or a list of at most {MAX_STOPS} strings")
    return tuple(text(value, "stop", limit=100) for value in values if value != "")


def temperature(raw: Any, default: float) -> float:
    if raw is None:
        return default
    if type(raw) not in (int, float) or not 0 <= raw <= 2:
        raise malformed("temperature must be a number in [0, 2]")
    return float(raw)


def seed(raw: Any) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int:
        raise malformed("seed must be an integer")
    return raw % (MAX_INT + 1) if raw < 0 else min(raw, MAX_INT)


def max_tokens(raw: Any, what: str = "max_tokens") -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or not 1 <= raw <= MAX_TOKENS:
        raise malformed(f"{what} must be an integer in [1, {MAX_TOKENS}]")
    return raw


def with_job_headers(response: HttpResponseBase, job_id: str | None, charged: int | str) -> HttpResponseBase:
    if job_id:
        response[JOB_HEADER] = job_id
    response[CHARGED_HEADER] = str(charged)
    response["Cache-Control"] = "no-store"
    return response


def error_headers(response: HttpResponseBase, error: ApiError, job_id: str | None) -> HttpResponseBase:
    for name, value in error.headers.items():
        response[name] = value
    return with_job_headers(response, job_id, 0)
