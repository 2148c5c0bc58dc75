"""Checks HTTP exchanges against Gitea's own Swagger 2.0 spec.

Used by the Gitea stand-in on every request it serves: the client's request
(path, method, query parameters, JSON body) and the stand-in's answer (status,
JSON body) must both fit ``../shared/gitea/swagger.v1.json``. Schemas are
checked strictly: an object may carry only the properties its definition
declares, so neither side can drift into fields real Gitea does not have.

The spec is Swagger 2.0 (JSON Schema draft 4 plus ``$ref: #/definitions/...``);
each schema is validated inside a document holding all definitions, so those
references resolve as they are. Exactly the exceptions that
``../shared/gitea/README.md`` documents are allowed:
- ``null`` values count as absent (Swagger 2.0 has no ``nullable``);
- the combined status of a commit without statuses has ``state: ""``;
- ``POST .../pulls/{index}/merge`` may answer 201 (auto-merge scheduled).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "gitea" / "swagger.v1.json"

# Parameters whose values are paths and may span several segments (Gitea routes them with "*").
_MULTI_SEGMENT = {"filepath"}


def strip_nulls(value: Any) -> Any:
    """Drop ``null`` members of objects, recursively (documented exception)."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def _strict(schema: Any) -> Any:
    """A copy where every object schema with declared properties allows no others."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


class Route:
    def __init__(self, template: str, item: dict) -> None:
        self.template = template
        self.item = item
        parts = []
        for segment in template.strip("/").split("/"):
            pieces = re.split(r"(\{[^}]+\})", segment)
            regex = ""
            for piece in pieces:
                if piece.startswith("{") and piece.endswith("}"):
                    name = piece[1:-1]
                    regex += ".+" if name in _MULTI_SEGMENT else "[^/]+?"
                else:
                    regex += re.escape(piece)
            parts.append(regex)
        self.regex = re.compile("^/" + "/".join(parts) + "$")
        self.literal_chars = len(re.sub(r"\{[^}]+\}", "", template))


class Contract:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.base = spec.get("basePath", "")
        self.routes = sorted((Route(t, item) for t, item in spec["paths"].items()), key=lambda r: -r.literal_chars)
        self._validators: dict[str, Draft4Validator] = {}

    @classmethod
    def load(cls, path: Path = SPEC_PATH) -> Contract:
        # No skip when the spec is missing: the contract is the point of these tests.
        return cls(json.loads(path.read_text(encoding="utf-8")))

    @cached_property
    def definitions(self) -> dict:
        return _strict(self.spec["definitions"])

    def validator(self, schema: dict) -> Draft4Validator:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            document = {"definitions": self.definitions, "allOf": [_strict(schema)]}
            self._validators[key] = Draft4Validator(document)
        return self._validators[key]

    def schema_errors(self, schema: dict, instance: Any) -> list[str]:
        errors = sorted(self.validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors[:5]]

    def match(self, method: str, path: str) -> tuple[Route, dict] | None:
        if not path.startswith(self.base + "/"):
            return None
        rest = path[len(self.base) :]
        for route in self.routes:
            if route.regex.match(rest) and method.lower() in route.item:
                return route, route.item[method.lower()]
        return None

    def _resolve_response(self, response: dict) -> dict:
        if "$ref" in response:
            return self.spec["responses"][response["$ref"].rsplit("/", 1)[-1]]
        return response

    # ------------------------------------------------------------------ requests

    def check_request(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes | None, headers: dict[str, str]
    ) -> list[str]:
        where = f"{method} {path}"
        found = self.match(method, path)
        if found is None:
            return [f"{where}: no such operation in the spec"]
        route, op = found
        problems = []
        params = list(route.item.get("parameters", [])) + list(op.get("parameters", []))
        declared = {p["name"]: p for p in params if p.get("in") == "query"}
        for name, values in query.items():
            param = declared.get(name)
            if param is None:
                problems.append(f"{where}: query parameter {name!r} is not in the spec")
                continue
            for value in values:
                problems.extend(self._check_query_value(where, param, value))
        body_param = next((p for p in params if p.get("in") == "body"), None)
        if body:
            if body_param is None:
                problems.append(f"{where}: sends a body the spec does not take")
            else:
                try:
                    data = json.loads(body)
                except ValueError:
                    return [*problems, f"{where}: body is not JSON"]
                problems.extend(f"{where} body: {e}" for e in self.schema_errors(body_param["schema"], data))
        elif body_param is not None and body_param.get("required"):
            problems.append(f"{where}: the spec requires a body")
        if not headers.get("Authorization", "").startswith("token "):
            problems.append(f"{where}: no 'Authorization: token ...' header")
        return problems

    def _check_query_value(self, where: str, param: dict, value: str) -> list[str]:
        kind = param.get("type")
        if kind == "integer" and not re.fullmatch(r"-?\d+", value):
            return [f"{where}: query {param['name']}={value!r} is not an integer"]
        if kind == "boolean" and value not in ("true", "false"):
            return [f"{where}: query {param['name']}={value!r} is not a boolean"]
        if param.get("enum") and value not in param["enum"]:
            return [f"{where}: query {param['name']}={value!r} not in {param['enum']}"]
        return []

    # ------------------------------------------------------------------ responses

    def check_response(self, method: str, path: str, status: int, body: bytes, content_type: str) -> list[str]:
        where = f"{method} {path} -> {status}"
        found = self.match(method, path)
        if found is None:
            return [f"{where}: no such operation in the spec"]
        route, op = found
        responses = op.get("responses", {})
        if str(status) not in responses:
            if route.template.endswith("/pulls/{index}/merge") and method == "POST" and status == 201:
                return []  # documented: auto-merge scheduled
            return [f"{where}: status not in the spec ({', '.join(responses)})"]
        response = self._resolve_response(responses[str(status)])
        schema = response.get("schema")
        if schema is None or schema.get("type") == "file":
            return []
        if "json" not in content_type:
            return [f"{where}: expected a JSON body, got {content_type!r}"]
        try:
            data = json.loads(body)
        except ValueError:
            return [f"{where}: body is not JSON"]
        data = strip_nulls(data)
        no_statuses = isinstance(data, dict) and not data.get("statuses") and not data.get("total_count")
        if route.template.endswith("/commits/{ref}/status") and no_statuses and data.get("state") == "":
            data = copy.copy(data)
            del data["state"]  # documented: no statuses at all gives state ""
        return [f"{where}: {e}" for e in self.schema_errors(schema, data)]
