"""The daemon against a scripted coordinator that follows docs/marketplace.md.

Most tests run the Ollama backend against its stand-in, whose generation speed the test
controls (``token_delay``); the full job flow also runs on the embedded SmolLM2.
"""

from __future__ import annotations

import logging

import pytest
import requests

from chain.protocol.market import input_digest, output_digest, verify_provider_auth, verify_receipt
from provider.backends.ollama import OllamaBackend
from provider.tests.support import make_job


@pytest.fixture
def ollama_backend(ollama):
    backend = OllamaBackend(ollama.url)
    yield backend
    backend.close()


def result_of(coordinator, job_id: str, timeout: float = 60) -> dict:
    return coordinator.wait_for(
        lambda: next(
            iter(coordinator.job_messages(job_id, "result") + coordinator.job_messages(job_id, "failed")), None
        ),
        timeout=timeout,
        what=f"the outcome of {job_id}",
    )


def check_stream(coordinator, job_id: str) -> list[dict]:
    """The job's messages: accepted first, chunks numbered 0.. in order, then its outcome last."""
    messages = coordinator.job_messages(job_id)
    assert messages[0]["type"] == "accepted"
    chunks = [m for m in messages if m["type"] == "chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert messages[-1]["type"] in ("result", "failed") and messages[1:-1] == chunks
    return chunks


def test_registers_offers_with_an_auth_the_coordinator_verifies(coordinator, start_daemon, ollama_backend):
    daemon = start_daemon(ollama_backend, concurrency=3)
    registration = coordinator.wait_for(lambda: coordinator.registrations and coordinator.registrations[0])
    signed = {"auth": registration["auth"], "signature": registration["signature"]}
    auth = verify_provider_auth(signed, coordinator=coordinator.address, purpose="register")
    assert auth["provider"] == daemon.address == registration["_provider"]
    assert registration["name"] == "test-provider-0"
    assert registration["url"] == daemon.health_url.removesuffix("/health")
    assert registration["offers"] == [
        {"model": "qwen3:8b", "input_price": 100, "output_price": 200, "context_length": 2048, "concurrency": 3}
    ]
    hello = coordinator.wait_for(lambda: coordinator.hellos and coordinator.hellos[0])
    assert hello["type"] == "hello" and hello["active"] == 0
    signed = {"auth": hello["auth"], "signature": hello["signature"]}
    assert (
        verify_provider_auth(signed, coordinator=coordinator.address, purpose="connect")["provider"] == daemon.address
    )
    coordinator.wait_for(lambda: coordinator.heartbeats, what="a heartbeat")
    assert coordinator.heartbeats[0] == {"type": "heartbeat", "active": 0, "_via": "ws", "_provider": daemon.address}


def test_a_job_on_the_embedded_model_streams_in_order_and_returns_a_verifiable_receipt(
    coordinator, start_daemon, llamacpp_backend
):
    daemon = start_daemon(llamacpp_backend, model="smollm2:135m", concurrency=1)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address), what="the websocket")
    job = make_job("job-embedded", model="smollm2:135m", max_tokens=24)
    coordinator.dispatch(daemon.address, job)
    outcome = result_of(coordinator, "job-embedded")
    assert outcome["type"] == "result", outcome
    chunks = check_stream(coordinator, "job-embedded")
    assert len(chunks) > 1 and "".join(c["text"] for c in chunks) == outcome["output"] != ""
    receipt = verify_receipt({"receipt": outcome["receipt"], "signature": outcome["signature"]})
    assert receipt["input_sha256"] == input_digest(
        {"model": job["model"], "input": job["input"], "options": job["options"]}
    )
    assert receipt["output_sha256"] == output_digest(outcome["output"])
    assert receipt["provider"] == daemon.address and receipt["coordinator"] == coordinator.address
    assert receipt["job_id"] == "job-embedded" and receipt["model"] == "smollm2:135m"
    assert receipt["input_tokens"] > 0 and 0 < receipt["output_tokens"] <= 24
    assert receipt["finish_reason"] in ("stop", "length") and receipt["finished_ms"] >= receipt["started_ms"]
    health = requests.get(daemon.health_url, timeout=5).json()
    assert health["jobs_done"] == 1 and health["active_jobs"] == 0


def test_a_job_read_whole_gets_its_result_and_no_chunks(coordinator, start_daemon, ollama_backend):
    daemon = start_daemon(ollama_backend, concurrency=1)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address), what="the websocket")
    job = make_job("whole", max_tokens=12, stream=False)
    coordinator.dispatch(daemon.address, job)
    outcome = result_of(coordinator, "whole")
    assert outcome["type"] == "result" and outcome["output"], outcome
    assert [m["type"] for m in coordinator.job_messages("whole")] == ["accepted", "result"]
    receipt = verify_receipt({"receipt": outcome["receipt"], "signature": outcome["signature"]})
    assert receipt["input_sha256"] == input_digest(
        {"model": job["model"], "input": job["input"], "options": job["options"]}
    )
    coordinator.dispatch(daemon.address, make_job("bad-stream", stream="no"))
    rejected = coordinator.wait_for(lambda: coordinator.job_messages("bad-stream", "rejected"))[0]
    assert "options.stream" in rejected["reason"]


def test_jobs_beyond_the_concurrency_are_rejected(coordinator, start_daemon, ollama, ollama_backend):
    ollama.token_delay = 0.02
    daemon = start_daemon(ollama_backend, concurrency=1)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator.dispatch(daemon.address, make_job("slow", max_tokens=40))
    coordinator.dispatch(daemon.address, make_job("extra"))
    rejected = coordinator.wait_for(lambda: coordinator.job_messages("extra", "rejected"))[0]
    assert rejected["reason"].startswith("busy")
    assert result_of(coordinator, "slow")["type"] == "result"
    coordinator.wait_for(lambda: daemon.daemon.health()["active_jobs"] == 0)
    coordinator.dispatch(daemon.address, make_job("after"))
    assert result_of(coordinator, "after")["type"] == "result"


def test_jobs_it_cannot_run_are_rejected_with_a_reason(coordinator, start_daemon, ollama_backend):
    daemon = start_daemon(ollama_backend)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator.dispatch(daemon.address, make_job("other-model", model="llama3:70b"))
    coordinator.dispatch(daemon.address, make_job("late", deadline_ms=1))
    coordinator.dispatch(daemon.address, make_job("bad", max_tokens=0))
    reasons = {
        job_id: coordinator.wait_for(lambda j=job_id: coordinator.job_messages(j, "rejected"))[0]["reason"]
        for job_id in ("other-model", "late", "bad")
    }
    assert "not offered" in reasons["other-model"]
    assert "deadline" in reasons["late"]
    assert "max_tokens" in reasons["bad"]


def test_reconnects_after_the_coordinator_drops_the_socket(coordinator, start_daemon, ollama_backend):
    daemon = start_daemon(ollama_backend)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator.drop(daemon.address)
    coordinator.wait_for(lambda: len(coordinator.hellos) == 2, what="a second hello")
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator.dispatch(daemon.address, make_job("after-reconnect"))
    assert result_of(coordinator, "after-reconnect")["type"] == "result"


def test_registers_again_when_the_coordinator_forgot_it(coordinator, start_daemon, ollama_backend):
    daemon = start_daemon(ollama_backend)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator._tokens.clear()  # a coordinator that lost its registrations: the next hello gets 4403
    coordinator.drop(daemon.address)
    coordinator.wait_for(lambda: len(coordinator.registrations) == 2, what="a second registration")
    coordinator.wait_for(lambda: coordinator.connected(daemon.address), what="the websocket again")


def test_falls_back_to_long_polling_when_the_websocket_cannot_be_established(coordinator, start_daemon, ollama_backend):
    coordinator.websocket_enabled = False
    daemon = start_daemon(ollama_backend, ws_attempts=2)
    coordinator.wait_for(lambda: coordinator.heartbeats, what="a heartbeat over HTTP")
    assert coordinator.ws_refusals == 2 and coordinator.heartbeats[0]["_via"] == "http"
    job = make_job("polled", max_tokens=8)
    coordinator.enqueue_poll_job(job)
    outcome = result_of(coordinator, "polled")
    assert outcome["type"] == "result" and outcome["_via"] == "http"
    chunks = check_stream(coordinator, "polled")
    assert "".join(c["text"] for c in chunks) == outcome["output"]
    verify_receipt({"receipt": outcome["receipt"], "signature": outcome["signature"]})
    health = requests.get(daemon.health_url, timeout=5).json()
    assert health["coordinator_connected"] is True and health["transport"] == "poll"


def test_explicit_poll_transport_never_opens_a_websocket(coordinator, start_daemon, ollama_backend):
    start_daemon(ollama_backend, transport="poll")
    coordinator.enqueue_poll_job(make_job("polled-only", max_tokens=4))
    assert result_of(coordinator, "polled-only")["type"] == "result"
    assert coordinator.ws_refusals == 0 and coordinator.hellos == []


def test_cancel_stops_the_generation_and_receipts_what_was_produced(coordinator, start_daemon, ollama, ollama_backend):
    ollama.token_delay = 0.05
    daemon = start_daemon(ollama_backend)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator.dispatch(daemon.address, make_job("long", max_tokens=2000))
    coordinator.wait_for(lambda: coordinator.job_messages("long", "chunk"), what="a first chunk")
    coordinator.cancel(daemon.address, "long")
    outcome = result_of(coordinator, "long")
    assert outcome["type"] == "result"
    receipt = verify_receipt({"receipt": outcome["receipt"], "signature": outcome["signature"]})
    assert receipt["finish_reason"] == "cancelled" and receipt["output_tokens"] < 2000
    assert receipt["output_sha256"] == output_digest(outcome["output"])
    coordinator.wait_for(lambda: ollama.disconnects == 1, what="Ollama to see the stream closed")


def test_health_reports_state_and_payments_received(coordinator, start_daemon, ollama_backend, caplog):
    caplog.set_level(logging.INFO, logger="aitbc.provider")
    daemon = start_daemon(ollama_backend)
    # The coordinator counts the socket when it sends the welcome; the provider, once it has read it.
    coordinator.wait_for(lambda: daemon.daemon.connected, what="the provider to see the welcome")
    health = requests.get(daemon.health_url, timeout=5).json()
    assert health == {
        "status": "ok",
        "provider": daemon.address,
        "name": "test-provider-0",
        "coordinator_connected": True,
        "transport": "websocket",
        "backend": "ollama",
        "models": ["qwen3:8b"],
        "active_jobs": 0,
        "jobs_done": 0,
        "earned_uait": 0,
    }
    # The node (here the scripted coordinator's account endpoint) shows the balance growing.
    coordinator.wait_for(lambda: coordinator.account_reads >= 1, what="a first balance read")
    coordinator.balances[daemon.address] = 1234
    coordinator.wait_for(lambda: daemon.daemon.earned_uait == 1234, what="the payment to be seen")
    assert "payment received: +1234 uait" in caplog.text
    assert requests.get(daemon.health_url, timeout=5).json()["earned_uait"] == 1234
    assert requests.get(daemon.health_url.replace("/health", "/nope"), timeout=5).status_code == 404


def test_stop_fails_jobs_that_do_not_finish_and_closes_the_socket(coordinator, start_daemon, ollama, ollama_backend):
    ollama.token_delay = 0.05
    daemon = start_daemon(ollama_backend, shutdown_grace_s=0.3)
    coordinator.wait_for(lambda: coordinator.connected(daemon.address))
    coordinator.dispatch(daemon.address, make_job("unfinished", max_tokens=2000))
    coordinator.wait_for(lambda: coordinator.job_messages("unfinished", "chunk"))
    daemon.stop()
    failed = coordinator.wait_for(lambda: coordinator.job_messages("unfinished", "failed"))[0]
    assert failed["reason"] == "provider shutting down"
    assert coordinator.wait_for(lambda: coordinator.ws_closes) == [1001]
