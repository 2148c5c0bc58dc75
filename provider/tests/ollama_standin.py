"""A stand-in for Ollama's HTTP API, the one backend that cannot run on our machines.

It follows Ollama's docs/api.md field by field for what the provider uses:

- ``GET /api/tags``: ``{"models": [{"name", "model", "modified_at", "size", "digest", "details": {...}}]}``
- ``POST /api/generate`` (``prompt``) and ``POST /api/chat`` (``messages``): NDJSON streamed with
  chunked transfer encoding, one object per token (``response`` or ``message``), ``"done": false``;
  the last object has ``"done": true``, ``done_reason``, ``total_duration``, ``load_duration``,
  ``prompt_eval_count``, ``prompt_eval_duration``, ``eval_count``, ``eval_duration`` (nanoseconds),
  ``created_at`` and ``model`` (``/api/generate`` adds ``context``). ``"stream": false`` answers
  the same final object in one JSON document with the whole text.
- options: ``num_predict`` (-1: no limit), ``temperature``, ``seed``, ``stop``, ``num_ctx``.
- an unknown model: 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``; a model
  name without a tag means ``:latest``.

The text is deterministic (a hash of the prompt, the seed and the position picks each
word): what is under test is the provider's handling of the protocol, not a language
model. A "token" is a word; the prompt's count is its words plus four per chat message
(the role markers a real template adds). ``token_delay`` slows generation so tests can
cancel mid-stream; the stand-in records each request and whether the client went away.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = [
    *("the", "a", "provider", "token", "ledger", "model", "answer", "stream", "chunk", "block", "escrow"),
    *("receipt", "coordinator", "job", "price", "quiet", "river", "mountain", "signal", "green", "orange"),
    *("bright", "swift", "careful", "simple"),
]


def created_at() -> str:
    """Ollama's timestamp: RFC 3339 in UTC with sub-second digits and a Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


@dataclass
class StandinModel:
    name: str
    size: int = 5_225_376_047
    family: str = "qwen3"
    parameter_size: str = "8.2B"
    quantization_level: str = "Q4_K_M"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": "2025-05-10T08:06:48.639712648-07:00",
            "size": self.size,
            "digest": self.digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": self.family,
                "families": [self.family],
                "parameter_size": self.parameter_size,
                "quantization_level": self.quantization_level,
            },
        }


@dataclass
class OllamaStandin:
    models: list[StandinModel] = field(default_factory=lambda: [StandinModel("qwen3:8b")])
    token_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OllamaStandin:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def find(self, name: str) -> StandinModel | None:
        return next((m for m in self.models if canonical(m.name) == canonical(name)), None)


def prompt_tokens(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        words: list[str] = []
        for message in body["messages"]:
            words += ["<|im_start|>", message.get("role", ""), "\n"] + str(message.get("content", "")).split()
            words.append("<|im_end|>")
        return words
    return str(body.get("prompt", "")).split()


def generate_words(body: dict[str, Any], options: dict[str, Any]):
    """Yield (word, index) until the limit; the caller applies stop sequences."""
    seed = options.get("seed", 0)
    basis = json.dumps([body.get("messages"), body.get("prompt"), seed], sort_keys=True).encode()
    limit = options.get("num_predict", -1)
    index = 0
    while limit is None or limit < 0 or index < limit:
        digest = hashlib.sha256(basis + index.to_bytes(4, "big")).digest()
        word = WORDS[digest[0] % len(WORDS)]
        yield (word if index == 0 else " " + word), index
        index += 1
        if (limit is None or limit < 0) and index >= 400:
            return  # a real model would reach its end of text; keep "unlimited" finite


def _handler(standin: OllamaStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle(self) -> None:
            try:
                super().handle()
            except (ConnectionResetError, BrokenPipeError):
                pass  # a client that closes mid-stream (a cancel) is normal for Ollama

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path == "/":
                data = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/api/tags":
                self._json(200, {"models": [m.tag_entry() for m in standin.models]})
            elif self.path == "/api/version":
                self._json(200, {"version": "0.12.6"})
            else:
                self._json(404, {"error": "404 page not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self._json(400, {"error": "invalid character in request body"})
            if self.path not in ("/api/generate", "/api/chat"):
                return self._json(404, {"error": "404 page not found"})
            standin.requests.append({"path": self.path, "body": body})
            name = body.get("model")
            if not name:
                return self._json(400, {"error": "model is required"})
            model = standin.find(name)
            if model is None:
                return self._json(404, {"error": f'model "{name}" not found, try pulling it first'})
            chat = self.path == "/api/chat"
            if chat and not isinstance(body.get("messages"), list):
                return self._json(400, {"error": "messages are required"})
            options = body.get("options") or {}
            stream = body.get("stream", True)
            started = time.monotonic_ns()
            if not chat and body.get("prompt", "") == "":
                # An empty prompt only loads the model (docs/api.md "Load a model").
                return self._json(
                    200,
                    {"model": name, "created_at": created_at(), "response": "", "done": True, "done_reason": "load"},
                )
            prompt = prompt_tokens(body)
            prompt_done = time.monotonic_ns()
            stops = [s for s in options.get("stop") or [] if s]
            text, produced, reason = "", 0, "length"
            if stream:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
            for word, _ in generate_words(body, options):
                candidate = text + word
                cut = min((candidate.find(s) for s in stops if s in candidate), default=-1)
                if cut >= 0:
                    word = candidate[:cut][len(text) :]
                    reason = "stop"
                produced += 1
                if word and stream:
                    piece = {"model": name, "created_at": created_at()}
                    if chat:
                        piece["message"] = {"role": "assistant", "content": word}
                    else:
                        piece["response"] = word
                    piece["done"] = False
                    if not self._chunk(piece):
                        standin.disconnects += 1
                        return
                text += word
                if reason == "stop":
                    break
                if standin.token_delay:
                    time.sleep(standin.token_delay)
            else:
                reason = "length" if options.get("num_predict", -1) >= 0 else "stop"
            finished = time.monotonic_ns()
            final: dict[str, Any] = {"model": name, "created_at": created_at()}
            if chat:
                final["message"] = {"role": "assistant", "content": "" if stream else text}
            else:
                final["response"] = "" if stream else text
            final.update(
                {
                    "done": True,
                    "done_reason": reason,
                    "total_duration": finished - started,
                    "load_duration": 1_000_000,
                    "prompt_eval_count": len(prompt),
                    "prompt_eval_duration": prompt_done - started,
                    "eval_count": produced,
                    "eval_duration": finished - prompt_done,
                }
            )
            if not chat:
                final["context"] = list(range(len(prompt) + produced))
            if not stream:
                return self._json(200, final)
            if self._chunk(final):
                self._end_chunks()
            else:
                standin.disconnects += 1

        def _chunk(self, obj: dict[str, Any]) -> bool:
            data = json.dumps(obj).encode() + b"\n"
            try:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return False
            return True

        def _end_chunks(self) -> None:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler
