"""Inference backends behind one interface (``base.Backend``)."""

from __future__ import annotations

from provider.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Completion,
    GenerationRequest,
    ModelNotFound,
)

BACKENDS = ("ollama", "openai", "llamacpp")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "Completion",
    "GenerationRequest",
    "ModelNotFound",
]
