"""The one interface every inference backend offers the daemon.

A backend is synchronous: the daemon runs each generation in a worker thread and
forwards its chunks to the event loop. Blocking HTTP streams and llama.cpp's C calls
are both naturally synchronous, and one thread per running job (the offer's
concurrency is small) costs less than wrapping each in an async adapter.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class BackendError(Exception):
    """The backend could not run a generation; the message is safe to send to the coordinator."""


class ModelNotFound(BackendError):
    """The backend does not have the requested model(s): ``missing`` names them when known."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


class BackendUnavailable(BackendError):
    """The backend could not be reached at all."""


@dataclass(frozen=True)
class Completion:
    """The last item a generation yields: the backend's own token counts."""

    input_tokens: int
    output_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled" (the receipt's values)


@dataclass
class GenerationRequest:
    """One job as a backend sees it: what to generate and a way to stop it."""

    model: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.8
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # False: the client takes the answer whole, so the daemon sends no chunks, only the result.
    stream: bool = True
    # Set by the daemon on a cancel message or at shutdown; backends check it between chunks.
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a generation takes either messages or a prompt")

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> GenerationRequest:
        """Read a JOB of docs/marketplace.md; raise ValueError when it is not one."""
        job_input = job.get("input")
        options = job.get("options") or {}
        if not isinstance(job_input, dict) or not isinstance(options, dict):
            raise ValueError("job input and options must be objects")
        messages = job_input.get("messages")
        prompt = job_input.get("prompt")
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise ValueError("input.messages must be a non-empty list")
            for message in messages:
                if (
                    not isinstance(message, dict)
                    or not isinstance(message.get("role"), str)
                    or not isinstance(message.get("content"), str)
                ):
                    raise ValueError("each message is {role, content} with string values")
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        elif not isinstance(prompt, str):
            raise ValueError("input holds messages or a prompt")
        max_tokens = options.get("max_tokens", 256)
        temperature_milli = options.get("temperature_milli", 800)
        seed = options.get("seed")
        stop = options.get("stop") or []
        stream = options.get("stream", True)
        if type(max_tokens) is not int or max_tokens < 1:
            raise ValueError("options.max_tokens must be a positive integer")
        if type(temperature_milli) is not int or temperature_milli < 0:
            raise ValueError("options.temperature_milli must be a non-negative integer")
        if seed is not None and type(seed) is not int:
            raise ValueError("options.seed must be an integer")
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("options.stop must be a list of non-empty strings")
        if type(stream) is not bool:
            raise ValueError("options.stream must be true or false")
        return cls(
            model=job["model"],
            messages=messages,
            prompt=None if messages is not None else prompt,
            max_tokens=max_tokens,
            temperature=temperature_milli / 1000,
            seed=seed,
            stop=list(stop),
            stream=stream,
        )


class Backend(ABC):
    """An inference engine the provider sells time on."""

    name: str = "backend"

    @abstractmethod
    def models(self) -> list[str]:
        """The model names this backend can run right now."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> Iterator[str | Completion]:
        """Yield the output text in chunks as it is produced, then exactly one ``Completion``.

        Raises ``BackendError`` (or a subclass) when the generation cannot run. When
        ``request.cancel`` is set the backend stops as soon as it can and yields a
        ``Completion`` with finish_reason "cancelled" and the counts it knows.
        """

    def check_models(self, wanted: list[str]) -> None:
        """Raise ``ModelNotFound`` naming every model in ``wanted`` this backend lacks."""
        available = self.models()
        missing = [m for m in wanted if not self.has_model(m, available)]
        if missing:
            raise ModelNotFound(
                f"{self.name} does not have {', '.join(missing)} (it has: {', '.join(available) or 'no models'})",
                missing,
            )

    def has_model(self, model: str, available: list[str]) -> bool:
        return model in available

    def close(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing to release)
        """Release what the backend holds (sessions, models)."""
