"""One place that turns errors into HTTP answers.

Every error answer has the shape ``{"error": {"code": "...", "message": "..."}}``
(``protocol.md``). Domain code raises ``ApiError`` (or a subclass); DRF's own
exceptions are mapped to the same shape.
"""

from __future__ import annotations

from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApiError(Exception):
    """A domain error with a protocol code and an HTTP status."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def as_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def json_error(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse(error_body(code, message), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "not_authenticated",
    drf_exceptions.PermissionDenied: "forbidden",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.Throttled: "rate_limited",
    drf_exceptions.ParseError: "malformed",
    drf_exceptions.ValidationError: "malformed",
    drf_exceptions.UnsupportedMediaType: "malformed",
    drf_exceptions.NotAcceptable: "not_acceptable",
}


def exception_handler(exc, context):
    from chain.protocol.errors import ProtocolError
    from chain.services import NodeUnavailable

    if isinstance(exc, ProtocolError):
        response = Response(error_body(exc.code, exc.message), status=exc.status)
        if exc.code in ("rate_limited", "mempool_full"):
            response["Retry-After"] = "1"
        return response
    if isinstance(exc, NodeUnavailable):
        return Response(error_body("unavailable", str(exc)), status=503)
    if isinstance(exc, ApiError):
        response = Response(exc.as_dict(), status=exc.status)
        for name, value in exc.headers.items():
            response[name] = value
        return response
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        message = _flatten(exc.detail)
    else:
        message = str(getattr(exc, "detail", exc))
    response.data = error_body(code, message)
    return response


def _flatten(detail, prefix: str = "") -> str:
    if isinstance(detail, dict):
        return "; ".join(_flatten(value, f"{prefix}{key}: ") for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(item, prefix) for item in detail)
    return f"{prefix}{detail}"
