"""Fixtures of the provider's tests: the scripted coordinator, the Ollama stand-in, the embedded model,
and a daemon running in a thread of the test process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from chain.protocol.keys import Key
from provider.backends.base import Backend
from provider.daemon import DaemonConfig, Offer, ProviderDaemon
from provider.tests.ollama_standin import OllamaStandin
from provider.tests.scripted_coordinator import ScriptedCoordinator
from provider.tests.support import RunningDaemon


@pytest.fixture
def coordinator() -> Iterator[ScriptedCoordinator]:
    server = ScriptedCoordinator(poll_wait=1.0).start()
    yield server
    server.stop()


@pytest.fixture
def ollama() -> Iterator[OllamaStandin]:
    server = OllamaStandin().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llamacpp_backend():
    """The embedded SmolLM2, loaded once for the whole run (it loads in about a second)."""
    from provider.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend()
    yield backend
    backend.close()


@pytest.fixture
def start_daemon(coordinator: ScriptedCoordinator) -> Iterator[Callable[..., RunningDaemon]]:
    """``start_daemon(backend, model=..., **config)``: a daemon registered with the scripted coordinator."""
    started: list[RunningDaemon] = []

    def _start(backend: Backend, *, model: str = "qwen3:8b", concurrency: int = 2, **config) -> RunningDaemon:
        base = DaemonConfig(
            name=f"test-provider-{len(started)}",
            coordinator_url=coordinator.url,
            offers=[Offer(model, 100, 200, 2048, concurrency)],
            concurrency=concurrency,
            port=0,
            heartbeat_s=0.5,
            balance_poll_s=0.2,
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
        )
        running = RunningDaemon(ProviderDaemon(replace(base, **config), backend, Key.generate())).start()
        started.append(running)
        return running

    yield _start
    for running in started:
        if running.thread.is_alive():
            running.stop()
