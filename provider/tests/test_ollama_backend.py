"""The Ollama backend against the stand-in that follows Ollama's docs/api.md."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import requests

from provider.backends.base import BackendUnavailable, Completion, GenerationRequest, ModelNotFound
from provider.backends.ollama import OllamaBackend, canonical_model_name, ollama_base_url
from provider.tests.ollama_standin import OllamaStandin, StandinModel

FINAL_FIELDS = {
    "model",
    "created_at",
    "done",
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


@pytest.fixture
def standin():
    server = OllamaStandin(models=[StandinModel("qwen3:8b"), StandinModel("llama3.2:latest")]).start()
    yield server
    server.stop()


@pytest.fixture
def backend(standin):
    backend = OllamaBackend(standin.url, context_length=4096)
    yield backend
    backend.close()


def run(backend: OllamaBackend, request: GenerationRequest) -> tuple[list[str], Completion]:
    items = list(backend.generate(request))
    assert isinstance(items[-1], Completion)
    assert all(isinstance(item, str) for item in items[:-1])
    return items[:-1], items[-1]


# -- the stand-in holds to Ollama's documented answers ---------------------------------------


def test_standin_streams_ndjson_with_ollamas_final_fields(standin):
    body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 5}}
    with requests.post(standin.url + "/api/chat", json=body, stream=True, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    *pieces, final = lines
    assert all(p["done"] is False and p["message"]["role"] == "assistant" for p in pieces)
    assert final.keys() >= FINAL_FIELDS and final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 5 and all(type(final[k]) is int for k in FINAL_FIELDS if k.endswith("duration"))
    assert final["created_at"].endswith("Z")


def test_standin_answers_one_document_without_streaming(standin):
    body = {"model": "qwen3:8b", "prompt": "hello there", "stream": False, "options": {"num_predict": 3}}
    answer = requests.post(standin.url + "/api/generate", json=body, timeout=10).json()
    assert answer.keys() >= FINAL_FIELDS and answer["response"] and "context" in answer
    assert answer["prompt_eval_count"] == 2 and answer["eval_count"] == 3


def test_standin_tags_and_missing_model(standin):
    tags = requests.get(standin.url + "/api/tags", timeout=10).json()["models"]
    assert {"name", "model", "modified_at", "size", "digest", "details"} <= tags[0].keys()
    answer = requests.post(standin.url + "/api/chat", json={"model": "nope", "messages": []}, timeout=10)
    assert answer.status_code == 404
    assert answer.json() == {"error": 'model "nope" not found, try pulling it first'}


# -- the backend ----------------------------------------------------------------------------


def test_models_come_from_tags_and_a_bare_name_means_latest(backend):
    assert backend.models() == ["qwen3:8b", "llama3.2:latest"]
    backend.check_models(["qwen3:8b", "llama3.2"])
    assert canonical_model_name("library/qwen3") == "library/qwen3:latest"


def test_a_missing_model_is_reported_clearly(backend):
    with pytest.raises(ModelNotFound, match="mistral.*it has: qwen3:8b"):
        backend.check_models(["qwen3:8b", "mistral"])
    request = GenerationRequest(model="mistral:7b", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ModelNotFound, match='model "mistral:7b" not found, try pulling it first'):
        list(backend.generate(request))


def test_chat_streams_chunks_and_reports_ollamas_counts(backend, standin):
    request = GenerationRequest(
        model="qwen3:8b",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something nice"}],
        max_tokens=12,
        temperature=0.7,
        seed=42,
    )
    chunks, completion = run(backend, request)
    assert len(chunks) == 12 and "".join(chunks).strip()
    # 2 messages: their words plus the stand-in's 4 template tokens each.
    assert completion == Completion(input_tokens=2 + 3 + 8, output_tokens=12, finish_reason="length")
    sent = standin.requests[-1]
    assert sent["path"] == "/api/chat" and sent["body"]["stream"] is True
    assert sent["body"]["messages"] == request.messages
    assert sent["body"]["options"] == {"num_predict": 12, "temperature": 0.7, "seed": 42, "num_ctx": 4096}


def test_prompt_input_uses_generate(backend, standin):
    chunks, completion = run(backend, GenerationRequest(model="qwen3:8b", prompt="once upon a time", max_tokens=4))
    assert standin.requests[-1]["path"] == "/api/generate"
    assert standin.requests[-1]["body"]["prompt"] == "once upon a time"
    assert len(chunks) == 4 and completion.input_tokens == 4 and completion.finish_reason == "length"


def test_same_seed_same_text(backend):
    request = GenerationRequest(model="qwen3:8b", prompt="abc", max_tokens=6, seed=7, temperature=0)
    assert run(backend, request)[0] == run(backend, dataclasses.replace(request, cancel=threading.Event()))[0]


def test_stop_sequences_are_passed_and_end_the_text(backend, standin):
    full, _ = run(backend, GenerationRequest(model="qwen3:8b", prompt="stop test", max_tokens=30, seed=1))
    text = "".join(full)
    stop_word = text.split()[5]
    chunks, completion = run(
        backend, GenerationRequest(model="qwen3:8b", prompt="stop test", max_tokens=30, seed=1, stop=[stop_word])
    )
    assert standin.requests[-1]["body"]["options"]["stop"] == [stop_word]
    assert stop_word not in "".join(chunks) and text.startswith("".join(chunks))
    assert completion.finish_reason == "stop" and completion.output_tokens < 30


def test_cancel_closes_the_stream_and_ollama_stops(backend, standin, wait_until):
    standin.token_delay = 0.02
    request = GenerationRequest(model="qwen3:8b", prompt="long", max_tokens=1000)
    items = []
    for item in backend.generate(request):
        items.append(item)
        if len(items) == 3:
            request.cancel.set()
    assert items[-1] == Completion(0, 3, "cancelled")
    # Ollama notices the closed connection at its next write and stops generating.
    wait_until(lambda: standin.disconnects == 1, timeout=10, message="the stand-in to see the client go")


def test_unreachable_ollama_is_backend_unavailable(free_port):
    backend = OllamaBackend(f"127.0.0.1:{free_port}")
    assert backend.base_url == f"http://127.0.0.1:{free_port}"
    with pytest.raises(BackendUnavailable):
        backend.models()
    with pytest.raises(BackendUnavailable):
        list(backend.generate(GenerationRequest(model="qwen3:8b", prompt="x")))


def test_ollama_host_forms():
    assert ollama_base_url(None) == "http://127.0.0.1:11434"
    assert ollama_base_url("0.0.0.0:11434") == "http://0.0.0.0:11434"
    assert ollama_base_url("https://ollama.example/") == "https://ollama.example"
