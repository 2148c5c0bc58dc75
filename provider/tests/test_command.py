"""``python manage.py provider serve`` as the devnet starts it: a real process with the embedded model."""

from __future__ import annotations

import signal
import stat

import pytest
import requests
from django.core.management import CommandError, call_command

from chain.protocol.market import verify_receipt
from conftest import clean_env, manage_argv
from provider.tests.support import make_job


@pytest.mark.process
def test_serve_with_the_embedded_model_runs_a_job_and_stops_cleanly_on_sigterm(
    coordinator, spawn, free_port, tmp_path, wait_until
):
    data_dir = tmp_path / "provider-data"
    argv = manage_argv("provider", "serve", "--backend", "llamacpp", "--port", str(free_port), "--name", "provider0")
    process = spawn(argv, env=clean_env(AITBC_DATA_DIR=data_dir, AITBC_COORDINATOR_URL=coordinator.url))
    health_url = f"http://127.0.0.1:{free_port}/health"

    def healthy() -> dict:
        process.assert_running()
        health = requests.get(health_url, timeout=2).json()
        return health if health["status"] == "ok" else None

    health = wait_until(healthy, timeout=90, message="the provider's /health to say ok")
    assert health["backend"] == "llamacpp" and health["models"] == ["smollm2:135m"]
    assert health["name"] == "provider0" and health["coordinator_connected"] is True

    # The key was made on first use, readable by its owner only, with its password beside it.
    for name in ("provider.keystore.json", "provider.password"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
    registration = coordinator.registrations[0]
    assert registration["url"] == f"http://127.0.0.1:{free_port}"
    assert registration["offers"][0]["context_length"] == 2048 and registration["offers"][0]["concurrency"] == 1

    coordinator.dispatch(health["provider"], make_job("cli-job", model="smollm2:135m", max_tokens=16))
    outcome = coordinator.wait_for(lambda: coordinator.job_messages("cli-job", "result"), timeout=60)[0]
    assert verify_receipt({"receipt": outcome["receipt"], "signature": outcome["signature"]})["output_tokens"] > 0

    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0, process.log()
    assert coordinator.wait_for(lambda: coordinator.ws_closes) == [1001]
    assert "provider stopped: 1 jobs done" in process.log()


def test_a_missing_ollama_model_stops_the_command_with_ollamas_message(ollama, tmp_path, settings):
    settings.DATA_DIR = tmp_path
    with pytest.raises(CommandError, match=r"mistral:7b.*try `ollama pull mistral:7b`"):
        call_command(
            "provider", "serve", "--backend-url", ollama.url, "--model", "mistral:7b", "--coordinator", "http://x"
        )


def test_no_coordinator_is_an_error(tmp_path, settings, monkeypatch):
    settings.DATA_DIR = tmp_path
    monkeypatch.delenv("AITBC_COORDINATOR_URL", raising=False)
    with pytest.raises(CommandError, match="AITBC_COORDINATOR_URL"):
        call_command("provider", "serve", "--backend", "llamacpp")
