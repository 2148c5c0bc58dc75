"""Ollama (https://github.com/ollama/ollama/blob/main/docs/api.md), the production default.

Chat inputs go to ``/api/chat`` and prompt inputs to ``/api/generate``, both streaming
NDJSON; the final line (``"done": true``) carries Ollama's own token counts
(``prompt_eval_count``, ``eval_count``), which are what the receipt reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

from provider.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Completion,
    GenerationRequest,
    ModelNotFound,
)

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"


def ollama_base_url(host: str | None) -> str:
    """``OLLAMA_HOST`` as Ollama's own CLI reads it: a bare ``host:port`` means http."""
    host = (host or DEFAULT_OLLAMA_HOST).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    return host


def canonical_model_name(name: str) -> str:
    """Ollama names without a tag mean ``:latest`` (``qwen3`` is ``qwen3:latest``)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


class OllamaBackend(Backend):
    name = "ollama"

    def __init__(self, host: str | None = None, *, context_length: int | None = None, timeout: float = 600.0) -> None:
        self.base_url = ollama_base_url(host)
        self.context_length = context_length
        self.timeout = timeout
        self.session = requests.Session()
        # A provider runs next to its Ollama; a proxy from the environment would only get in the way.
        self.session.trust_env = False

    def _error(self, response: requests.Response) -> BackendError:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text
        message = str(message)[:500]
        if response.status_code == 404:
            return ModelNotFound(f"ollama: {message}")
        return BackendError(f"ollama answered {response.status_code}: {message}")

    def models(self) -> list[str]:
        try:
            response = self.session.get(self.base_url + "/api/tags", timeout=30)
        except requests.RequestException as exc:
            raise BackendUnavailable(f"ollama at {self.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise self._error(response)
        return [entry["name"] for entry in response.json().get("models", [])]

    def has_model(self, model: str, available: list[str]) -> bool:
        return canonical_model_name(model) in {canonical_model_name(name) for name in available}

    def _options(self, request: GenerationRequest) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": request.max_tokens, "temperature": request.temperature}
        if request.seed is not None:
            options["seed"] = request.seed
        if request.stop:
            options["stop"] = request.stop
        if self.context_length:
            # Ollama's default context is smaller than most offers; ask for what we sell.
            options["num_ctx"] = self.context_length
        return options

    def generate(self, request: GenerationRequest) -> Iterator[str | Completion]:
        body: dict[str, Any] = {"model": request.model, "stream": True, "options": self._options(request)}
        if request.messages is not None:
            path, body["messages"] = "/api/chat", request.messages
        else:
            path, body["prompt"] = "/api/generate", request.prompt
        try:
            response = self.session.post(self.base_url + path, json=body, stream=True, timeout=(10, self.timeout))
        except requests.RequestException as exc:
            raise BackendUnavailable(f"ollama at {self.base_url} unreachable: {exc}") from exc
        # Closing the response drops the connection, which is how Ollama learns to stop generating.
        with response:
            if response.status_code != 200:
                raise self._error(response)
            produced = 0
            try:
                for line in response.iter_lines():
                    if request.cancel.is_set():
                        # Ollama's counts come only with the last line; each streamed line is one token.
                        yield Completion(0, produced, "cancelled")
                        return
                    if not line:
                        continue
                    chunk = json.loads(line)
                    if "error" in chunk:
                        raise BackendError(f"ollama: {chunk['error']}")
                    text = chunk["message"]["content"] if "message" in chunk else chunk.get("response", "")
                    if text:
                        produced += 1
                        yield text
                    if chunk.get("done"):
                        reason = "length" if chunk.get("done_reason") == "length" else "stop"
                        yield Completion(
                            int(chunk.get("prompt_eval_count", 0)), int(chunk.get("eval_count", 0)), reason
                        )
                        return
            except requests.RequestException as exc:
                raise BackendUnavailable(f"ollama stream broke: {exc}") from exc
            except (ValueError, KeyError, TypeError) as exc:
                raise BackendError(f"ollama sent a line outside its API: {exc}") from exc
        raise BackendError("ollama ended the stream without its final line")

    def close(self) -> None:
        self.session.close()
