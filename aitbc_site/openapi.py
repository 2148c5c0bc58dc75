"""One place that completes the OpenAPI schema's error answers (a drf-spectacular hook).

Every error of the API has one shape, ``{"error": {"code", "message"}}``
(``aitbc_site.errors``). Views document which statuses they answer; this hook gives
each documented error that shape, adds the errors every view of a kind can answer
(the node's 503 when it has no chain, 403 without a session), and adds the
endpoints that are not DRF views: ``/health``, ``/metrics`` and Gitea's webhook.
"""

from __future__ import annotations

from typing import Any

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMAS = {
    "ErrorDetail": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "stable snake_case name of the error"},
            "message": {"type": "string", "description": "for people"},
        },
        "required": ["code", "message"],
    },
    "Error": {
        "type": "object",
        "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
        "required": ["error"],
    },
}
NODE_UNAVAILABLE = "unavailable: this node has no chain loaded, or its database cannot answer"
API_KEY_REFUSED = "not_authenticated: the API key is unknown or revoked"
API_KEY_READS_ONLY = "forbidden: an API key only reads; log in to change anything"
NOT_LOGGED_IN = "not_authenticated: log in first (session cookie; unsafe methods need the CSRF token)"


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _text(description: str, media: str = "text/plain") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


EXTRA_PATHS: dict[str, dict[str, Any]] = {
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Is this process able to serve?",
            "description": "Checks the database, the channel layer, the Celery broker and, on a node, block "
            "production, each with a short timeout.",
            "tags": ["operations"],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "everything answers: `{status: ok, mode, checks, elapsed_ms}`",
                    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": {}}}},
                },
                "503": _error("unavailable: the body's `down` names what does not answer"),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": "Chain height, finalized transactions per second, mempool, peers, validators, jobs "
            "by state, providers online, dispatch latency and Celery task outcomes, in Prometheus' text format. "
            "Loopback clients, or `Authorization: Bearer <METRICS_TOKEN>`.",
            "tags": ["operations"],
            "security": [{}, {"metricsToken": []}],
            "responses": {
                "200": _text("the metrics", "text/plain; version=0.0.4"),
                "401": _error("not_authenticated: neither a loopback client nor the metrics token"),
            },
        }
    },
    "/v1/automation/webhook": {
        "post": {
            "operationId": "automation_webhook",
            "summary": "Gitea's webhook",
            "description": "Authenticated by its HMAC (`X-Gitea-Signature` over the body with the webhook "
            "secret); queues the automation job the event concerns. A delivery seen before is answered "
            "without queueing anything again.",
            "tags": ["v1"],
            "security": [{}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {
                    "description": "a repeated delivery (`duplicate`) or an event the automation ignores",
                    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": {}}}},
                },
                "202": {
                    "description": "`{status: queued, job, delivery}`: the job the event concerns was queued",
                    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": {}}}},
                },
                "400": _error("malformed: the body is not a JSON object, or X-Gitea-Delivery is missing"),
                "403": _error("bad_signature (the HMAC does not verify) or webhook_not_configured"),
                "405": _error("method_not_allowed: POST only"),
            },
        }
    },
}


def postprocess(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in ERROR_SCHEMAS.items():
        schemas.setdefault(name, schema)
    components.setdefault("securitySchemes", {})["metricsToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "the METRICS_TOKEN of the deployment",
    }
    paths = result.setdefault("paths", {})
    for path, operations in EXTRA_PATHS.items():
        paths.setdefault(path, operations)
    for operations in paths.values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if any("apiKey" in requirement for requirement in operation.get("security") or []):
                responses.setdefault("401", _error(API_KEY_REFUSED))
                if method != "get":
                    responses.setdefault("403", _error(API_KEY_READS_ONLY))
            tags = operation.get("tags") or []
            if any(tag.startswith("chain") for tag in tags):
                responses.setdefault("503", _error(NODE_UNAVAILABLE))
            elif _needs_session(operation):
                responses.setdefault("403", _error(NOT_LOGGED_IN))
            for status, response in responses.items():
                if status[0] in "45" and "content" not in response:
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
    return result


def _needs_session(operation: dict[str, Any]) -> bool:
    security = operation.get("security")
    if not security:
        return False
    # An empty requirement ({}) means anonymous callers are accepted too.
    return all(requirement for requirement in security) and any("cookieAuth" in r for r in security)
