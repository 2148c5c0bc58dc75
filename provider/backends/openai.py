"""OpenAI-compatible servers: vLLM, llama.cpp's server, LM Studio, llama-cpp-python's server.

Chat inputs go to ``/chat/completions`` and prompt inputs to ``/completions`` (a plain
text completion, as the prompt means there), both with SSE streaming and
``stream_options.include_usage`` so the server reports its own token counts in a last
chunk. A server without ``/completions`` gets the prompt as a single user message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
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

logger = logging.getLogger("aitbc.provider.openai")

DEFAULT_OPENAI_BASE_URL = "http://127.0.0.1:8080/v1"


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout: float = 600.0) -> None:
        # Like the OpenAI SDK's base_url: it includes the /v1 prefix.
        self.base_url = (base_url or DEFAULT_OPENAI_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self._completions_missing = False
        self._warned_no_usage = False

    def _error(self, response: requests.Response) -> BackendError:
        try:
            error = response.json().get("error")
            message = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            message = None
        message = str(message or response.text)[:500]
        if response.status_code == 404:
            return ModelNotFound(f"openai server: {message}")
        return BackendError(f"openai server answered {response.status_code}: {message}")

    def models(self) -> list[str]:
        try:
            response = self.session.get(self.base_url + "/models", timeout=30)
        except requests.RequestException as exc:
            raise BackendUnavailable(f"openai server at {self.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise self._error(response)
        return [entry["id"] for entry in response.json().get("data", [])]

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        if request.messages is not None:
            body["messages"] = request.messages
            return "/chat/completions", body
        if self._completions_missing:
            body["messages"] = [{"role": "user", "content": request.prompt}]
            return "/chat/completions", body
        body["prompt"] = request.prompt
        return "/completions", body

    def _open(self, request: GenerationRequest) -> requests.Response:
        path, body = self._body(request)
        try:
            response = self.session.post(self.base_url + path, json=body, stream=True, timeout=(10, self.timeout))
            if response.status_code == 404 and path == "/completions" and "model" not in response.text.lower():
                # No legacy completions endpoint on this server: send the prompt as one user message.
                response.close()
                self._completions_missing = True
                path, body = self._body(request)
                response = self.session.post(self.base_url + path, json=body, stream=True, timeout=(10, self.timeout))
        except requests.RequestException as exc:
            raise BackendUnavailable(f"openai server at {self.base_url} unreachable: {exc}") from exc
        return response

    def generate(self, request: GenerationRequest) -> Iterator[str | Completion]:
        response = self._open(request)
        with response:
            if response.status_code != 200:
                raise self._error(response)
            stream = StreamReader()
            try:
                for text in stream.read(response.iter_lines()):
                    yield text
                    if request.cancel.is_set():
                        # Closing the response drops the connection: the server stops generating.
                        yield Completion(0, stream.deltas, "cancelled")
                        return
            except requests.RequestException as exc:
                raise BackendUnavailable(f"openai server stream broke: {exc}") from exc
        if stream.usage is not None:
            usage = stream.usage
            yield Completion(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), stream.finish)
            return
        if not self._warned_no_usage:
            logger.warning(
                "%s ignores stream_options.include_usage: output tokens are counted as streamed deltas", self.base_url
            )
            self._warned_no_usage = True
        input_tokens = self._count_prompt_tokens(request) if request.prompt is not None else 0
        yield Completion(input_tokens, stream.deltas, stream.finish)

    def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The server's own count of a prompt, where it offers one (llama-cpp-python's ``/extras/tokenize/count``).

        0 when it does not: an input count we cannot get from the server is not charged.
        """
        root = self.base_url.removesuffix("/v1")
        try:
            response = self.session.post(
                root + "/extras/tokenize/count", json={"input": request.prompt, "model": request.model}, timeout=30
            )
            if response.status_code == 200:
                return int(response.json()["count"])
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        return 0

    def close(self) -> None:
        self.session.close()


class StreamReader:
    """Reads an OpenAI SSE stream (chat or text completions): text deltas, finish reason, usage."""

    def __init__(self) -> None:
        self.deltas = 0
        self.finish = "stop"
        self.usage: dict[str, Any] | None = None

    def read(self, lines: Iterable[bytes | str]) -> Iterator[str]:
        try:
            for raw in lines:
                line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping") and event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if chunk.get("error"):
                    error = chunk["error"]
                    raise BackendError(f"openai server: {error.get('message') if isinstance(error, dict) else error}")
                if chunk.get("usage"):
                    # With include_usage, a last chunk with no choices carries the server's counts.
                    self.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta")
                    text = (delta.get("content") if isinstance(delta, dict) else choice.get("text")) or ""
                    if text:
                        self.deltas += 1
                        yield text
                    if choice.get("finish_reason"):
                        self.finish = "length" if choice["finish_reason"] == "length" else "stop"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(f"openai server sent a chunk outside the API: {exc}") from exc
