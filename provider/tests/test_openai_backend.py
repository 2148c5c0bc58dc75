"""The OpenAI-compatible backend against llama-cpp-python's own server running SmolLM2 (a real process)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import requests

from conftest import PROJECT_ROOT, clean_env, find_free_port, wait_until
from provider.backends.base import Completion, GenerationRequest, ModelNotFound
from provider.backends.llamacpp import smollm2_path
from provider.backends.openai import OpenAIBackend, StreamReader

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's server (``provider/tests/llama_server.py``) with the shipped SmolLM2; its /v1 URL."""
    port = find_free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    argv = [sys.executable, "-m", "provider.tests.llama_server", "--model", str(smollm2_path()), "--model_alias", MODEL]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text(errors='replace')[-3000:]}")
            return requests.get(base_url + "/models", timeout=2).status_code == 200

        wait_until(ready, timeout=120, message="llama_cpp.server to answer")
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def backend(llama_server: str) -> Iterator[OpenAIBackend]:
    backend = OpenAIBackend(llama_server)
    yield backend
    backend.close()


def run(backend: OpenAIBackend, request: GenerationRequest) -> tuple[list[str], Completion]:
    *chunks, completion = list(backend.generate(request))
    assert isinstance(completion, Completion)
    return chunks, completion


def reference(base_url: str, path: str, body: dict) -> dict:
    """The server's own answer without streaming: its text and its usage."""
    return requests.post(base_url + path, json={**body, "model": MODEL, "stream": False}, timeout=60).json()


MESSAGES = [{"role": "user", "content": "Name three animals that live in the sea."}]


@pytest.mark.process
def test_models_and_a_missing_model(backend):
    assert backend.models() == [MODEL]
    backend.check_models([MODEL])
    with pytest.raises(ModelNotFound, match="qwen3:8b"):
        backend.check_models(["qwen3:8b"])


@pytest.mark.process
def test_chat_streams_and_counts_match_the_servers_own(backend, llama_server):
    request = GenerationRequest(model=MODEL, messages=MESSAGES, max_tokens=40, temperature=0, seed=1)
    chunks, completion = run(backend, request)
    assert len(chunks) > 1
    answer = reference(llama_server, "/chat/completions", {"messages": MESSAGES, "max_tokens": 40, "temperature": 0})
    assert "".join(chunks) == answer["choices"][0]["message"]["content"]
    # This server ignores include_usage when streaming: output is counted per streamed token,
    # which is the server's own completion count; a chat's input count is not available.
    assert completion.output_tokens == answer["usage"]["completion_tokens"]
    assert completion.input_tokens == 0
    assert completion.finish_reason == ("length" if answer["choices"][0]["finish_reason"] == "length" else "stop")


@pytest.mark.process
def test_prompt_uses_completions_and_the_servers_token_count(backend, llama_server):
    prompt = "The ocean is"
    chunks, completion = run(backend, GenerationRequest(model=MODEL, prompt=prompt, max_tokens=12, temperature=0))
    answer = reference(llama_server, "/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert "".join(chunks) == answer["choices"][0]["text"]
    assert completion.input_tokens == answer["usage"]["prompt_tokens"] > 0
    assert completion.output_tokens == answer["usage"]["completion_tokens"] == 12
    assert completion.finish_reason == "length"


@pytest.mark.process
def test_stop_and_cancel(backend):
    request = GenerationRequest(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", max_tokens=30, temperature=0)
    full = "".join(run(backend, request)[0])
    assert " 9" in full, full
    chunks, completion = run(backend, dataclasses.replace(request, stop=[" 9"], cancel=threading.Event()))
    assert " 9" not in "".join(chunks) and full.startswith("".join(chunks))
    assert completion.finish_reason == "stop"

    request = GenerationRequest(model=MODEL, prompt="Once upon a time", max_tokens=1500, temperature=0.8, seed=2)
    for count, item in enumerate(backend.generate(request), start=1):
        if isinstance(item, Completion):
            break
        if count == 2:
            request.cancel.set()
    assert item.finish_reason == "cancelled" and item.output_tokens == 2


def test_stream_reader_takes_usage_from_the_last_chunk():
    """The include_usage stream as OpenAI documents it: a final chunk with no choices and the usage."""
    lines = [
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',  # noqa: E501
        b"",
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}',  # noqa: E501
        b": keep-alive",
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}],"usage":null}',  # noqa: E501
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}',  # noqa: E501
        b"data: [DONE]",
    ]
    reader = StreamReader()
    assert list(reader.read(lines)) == ["Hel", "lo"]
    assert reader.usage == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert reader.finish == "length" and reader.deltas == 2
