"""Helpers shared by the provider's tests."""

from __future__ import annotations

import asyncio
import threading
import time

from provider.daemon import ProviderDaemon


def make_job(job_id: str, *, model: str = "qwen3:8b", max_tokens: int = 16, **options) -> dict:
    """A JOB as docs/marketplace.md defines it; extra keywords become options."""
    job_input = options.pop("input", {"messages": [{"role": "user", "content": f"Say hello ({job_id})"}]})
    deadline_ms = options.pop("deadline_ms", int(time.time() * 1000) + 120_000)
    return {
        "id": job_id,
        "model": model,
        "input": job_input,
        "options": {"max_tokens": max_tokens, "temperature_milli": 0, "seed": 1, "stop": [], **options},
        "deadline_ms": deadline_ms,
    }


class RunningDaemon:
    """A ``ProviderDaemon`` in its own thread and event loop, as the command runs it."""

    def __init__(self, daemon: ProviderDaemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=asyncio.run, args=(daemon.run(),), name="daemon", daemon=True)

    def start(self) -> RunningDaemon:
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.daemon._loop is None or self.daemon.health_server._server is None:
            if time.monotonic() > deadline:
                raise AssertionError("the daemon did not start")
            time.sleep(0.01)
        return self

    @property
    def address(self) -> str:
        return self.daemon.key.address

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.health_server.port}/health"

    def stop(self, timeout: float = 30) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"
