"""The gateway on a live devnet with the official ``ollama`` and ``openai`` packages, unmodified.

Two providers run SmolLM2 on the embedded backend. Every answer is checked against the
same model run here, greedily, on the same prompt (the real model's output, not a
stand-in's), and every charge against the deposit's books: the deposit goes down by
exactly what the gateway said it charged. Each scenario gets its own key and deposit
(``apikey create --amount``, paid by the faucet), so the books of one are not the others'.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import requests

from chain.client import HttpChainClient
from conftest import clean_env, devnet_running, find_free_port_range, wait_until
from marketplace.tests.support import wait_for_providers

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2:135m"
STARTUP = 240


class Gateway:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.network = json.loads((data_dir / "devnet" / "network.json").read_text())
        self.url = self.network["coordinator"]["url"]
        self.node = HttpChainClient(self.network["nodes"][0]["rpc_url"])

    def new_key(self, *, user: str, amount: int, **extra: str) -> tuple[str, str]:
        """A new key of ``user`` on a new deposit of ``amount`` uait; (key, deposit id)."""
        faucet = self.network["faucet"]
        argv = [sys.executable, "manage.py", "apikey", "create", "--user", user, "--amount", str(amount)]
        argv += ["--payer-keystore", faucet["keystore"], "--password-file", faucet["password_file"], "--json"]
        for name, value in extra.items():
            argv += [f"--{name.replace('_', '-')}", value]
        done = subprocess.run(
            argv, cwd=ROOT, env=clean_env(AITBC_DATA_DIR=self.data_dir), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        created = json.loads(done.stdout.splitlines()[-1])  # logs share stdout: the answer is the last line
        return created["key"], created["deposit"]

    def revoke(self, key_id: int) -> None:
        argv = [sys.executable, "manage.py", "apikey", "revoke", str(key_id)]
        subprocess.run(argv, cwd=ROOT, env=clean_env(AITBC_DATA_DIR=self.data_dir), check=True, timeout=60)

    def get(self, path: str, key: str) -> dict:
        answer = requests.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def deposit(self, deposit_id: str, key: str) -> dict:
        return self.get(f"/v1/deposits/{deposit_id}", key)

    def newest_job(self, key: str) -> dict:
        [job] = self.get("/v1/jobs?state=completed,settled&limit=1", key)
        return self.get(f"/v1/jobs/{job['id']}", key)

    def job(self, job_id: str, key: str) -> dict:
        return self.get(f"/v1/jobs/{job_id}", key)

    def balance(self, address: str) -> int:
        return self.node.account(address)["balance"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("devnet-gateway")
    args = ("--port", str(find_free_port_range(40)), "--providers", "2", "--param", "block_time_ms=500")
    # Deposit payouts go out a second after a charge, so a test sees its provider paid on chain.
    env = clean_env(AITBC_DATA_DIR=data_dir, AITBC_MARKET_PAYOUT_BATCH_AGE_S="1")
    with devnet_running(data_dir, *args, env=env, startup_timeout=STARTUP):
        net = Gateway(data_dir)
        wait_for_providers(net.url, 2)
        yield net


@pytest.fixture(scope="module")
def reference() -> Iterator:
    """SmolLM2 in this process: what the model itself answers, greedily, to a prompt."""
    from provider.backends.base import Completion, GenerationRequest
    from provider.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend()

    def answer(*, max_tokens: int, prompt: str | None = None, messages: list | None = None) -> str:
        request = GenerationRequest(
            model=MODEL, prompt=prompt, messages=messages, max_tokens=max_tokens, temperature=0.0, seed=1
        )
        return "".join(item for item in backend.generate(request) if not isinstance(item, Completion))

    yield answer
    backend.close()


@pytest.mark.process
def test_the_devnet_hands_out_a_working_demo_key(gateway: Gateway) -> None:
    entry = gateway.network["gateway"]
    assert entry["ollama_url"] == gateway.url and entry["openai_base_url"] == f"{gateway.url}/v1"
    key_file = Path(entry["api_key_file"])
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert [m.model for m in ollama.Client(host=f"{gateway.url}/k/{key}").list().models] == [MODEL]
    out = (gateway.data_dir / "devnet.log").read_text()
    assert f"OLLAMA_HOST={gateway.url}/k/{key}" in out and f'base_url="{gateway.url}/v1"' in out


@pytest.mark.process
def test_ollama_clients_chat_and_generate_paid_from_the_deposit(gateway: Gateway, reference) -> None:
    key, deposit_id = gateway.new_key(user="ollama-user", amount=1_000_000)
    by_path = ollama.Client(host=f"{gateway.url}/k/{key}")
    by_header = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})
    assert [m.model for m in by_header.list().models] == [MODEL]
    assert by_path.show(MODEL).capabilities == ["completion"]

    messages = [{"role": "user", "content": "Name three colors."}]
    before = gateway.deposit(deposit_id, key)
    answer = by_path.chat(model=MODEL, messages=messages, options={"temperature": 0, "num_predict": 16}, stream=False)
    assert answer.message.content == reference(messages=messages, max_tokens=16)
    assert answer.done and answer.done_reason in ("stop", "length")
    assert answer.eval_count > 0 and answer.prompt_eval_count > 0 and answer.total_duration > 0
    job = gateway.newest_job(key)
    assert job["output"] == answer.message.content and job["output_tokens"] == answer.eval_count
    after = gateway.deposit(deposit_id, key)
    assert before["available"] - after["available"] == job["charge"] > 0

    prompt = "Why is the sky blue? Answer in one sentence."
    parts = list(
        by_header.generate(model=MODEL, prompt=prompt, options={"temperature": 0, "num_predict": 20}, stream=True)
    )
    assert len(parts) > 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.response for p in parts)
    assert text == reference(prompt=prompt, max_tokens=20)
    assert parts[-1].eval_count == gateway.newest_job(key)["output_tokens"]
    job = gateway.newest_job(key)
    final = gateway.deposit(deposit_id, key)
    assert after["available"] - final["available"] == job["charge"] > 0
    streamed_chat = by_path.chat(
        model=MODEL, messages=messages, options={"temperature": 0, "num_predict": 16}, stream=True
    )
    assert "".join(p.message.content for p in streamed_chat) == answer.message.content

    with pytest.raises(ollama.ResponseError) as missing:
        by_path.chat(model="llama9:900b", messages=messages)
    assert missing.value.status_code == 404 and "not found" in missing.value.error


@pytest.mark.process
def test_openai_clients_chat_streaming_and_not_paid_from_the_deposit(gateway: Gateway, reference) -> None:
    key, deposit_id = gateway.new_key(user="openai-user", amount=1_000_000)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = reference(messages=messages, max_tokens=12)

    before = gateway.deposit(deposit_id, key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=7
    )
    completion = raw.parse()
    job_id, charged = raw.headers["X-AITBC-Job"], int(raw.headers["X-AITBC-Charged"])
    assert completion.id == job_id and completion.choices[0].message.content == expected
    assert completion.usage.completion_tokens > 0 and completion.choices[0].finish_reason in ("stop", "length")
    job = gateway.job(job_id, key)
    assert job["charge"] == charged > 0 and job["output"] == expected
    after = gateway.deposit(deposit_id, key)
    assert before["available"] - after["available"] == charged

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected and len(chunks) > 3
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == completion.usage.completion_tokens
    charged = usage.model_extra["aitbc_charged"]
    assert usage.model_extra["aitbc_job"] == chunks[0].id
    final = gateway.deposit(deposit_id, key)
    assert after["available"] - final["available"] == charged == gateway.job(chunks[0].id, key)["charge"]

    stopped = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count: 1, 2, 3,"}], max_tokens=30, temperature=0, stop=["5"]
    )
    assert "5" not in stopped.choices[0].message.content

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="llama9:900b", messages=messages)
    assert missing.value.code == "model_not_found"


@pytest.mark.process
def test_a_revoked_key_and_an_exhausted_deposit_are_refused(gateway: Gateway) -> None:
    key, _ = gateway.new_key(user="revoked-user", amount=100_000)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    assert client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4).choices[0].message.content
    [listed] = [k for k in gateway_keys(gateway) if k["user"] == "revoked-user"]
    gateway.revoke(listed["id"])
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    with pytest.raises(ollama.ResponseError) as revoked:
        ollama.Client(host=f"{gateway.url}/k/{key}").chat(model=MODEL, messages=messages)
    assert revoked.value.status_code == 401

    # 60 uait: a few short answers, then not even the worst case of one more.
    poor, deposit_id = gateway.new_key(user="poor-user", amount=60)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=poor, max_retries=0)
    charged = 0
    with pytest.raises(openai.APIStatusError) as exhausted:
        for _ in range(20):
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=40)
            charged += int(raw.headers["X-AITBC-Charged"])
    assert exhausted.value.status_code == 402 and "insufficient_deposit" in str(exhausted.value.body)
    assert charged > 0
    books = gateway.deposit(deposit_id, poor)
    assert books["charged"] == charged and books["reserved"] == 0 and books["available"] == 60 - charged
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=f"{gateway.url}/k/{poor}").generate(model=MODEL, prompt="Hi", options={"num_predict": 40})
    assert refused.value.status_code == 402 and "left" in refused.value.error


def gateway_keys(gateway: Gateway) -> list[dict]:
    argv = [sys.executable, "manage.py", "apikey", "list", "--json"]
    done = subprocess.run(
        argv, cwd=ROOT, env=clean_env(AITBC_DATA_DIR=gateway.data_dir), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.process
def test_a_client_gone_mid_stream_pays_for_what_was_produced_and_the_provider_is_paid(gateway: Gateway) -> None:
    key, deposit_id = gateway.new_key(user="hasty-user", amount=1_000_000)
    body = {"model": MODEL, "prompt": "Count from 1 to 200, one number per line:", "options": {"num_predict": 300}}
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST", f"{gateway.url}/api/generate", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as answer,
    ):
        assert answer.status_code == 200 and answer.headers["X-AITBC-Charged"] == "pending"
        job_id = answer.headers["X-AITBC-Job"]
        provider = gateway.job(job_id, key)["provider"]
        paid_before = gateway.balance(provider)
        lines = answer.iter_lines()
        received = [json.loads(next(lines)) for _ in range(5)]
    assert not any(line["done"] for line in received)

    job = wait_until(
        lambda: (j := gateway.job(job_id, key))["state"] == "settled" and j, timeout=60, message="the job settled"
    )
    assert 5 <= job["output_tokens"] < 300, "charged for what was produced, not for what was asked"
    assert job["charge"] > 0 and "".join(r["response"] for r in received) in job["output"]
    books = gateway.deposit(deposit_id, key)
    assert books["charged"] == job["charge"] and books["reserved"] == 0
    assert books["paid"] == job["charge"], "settled: the batch that pays it committed"
    # On the chain: this deposit's escrow paid out exactly the charge, and the provider received it
    # (other deposits may pay the same provider meanwhile: its balance grew by at least as much).
    assert gateway.node.escrow(books["escrow_id"])["paid"] == job["charge"]
    assert gateway.balance(provider) - paid_before >= job["charge"]


@pytest.mark.process
def test_twenty_streaming_clients_at_once_each_get_their_own_complete_answer(gateway: Gateway) -> None:
    key, deposit_id = gateway.new_key(user="busy-user", amount=10_000_000)
    words = [f"{name}{number}" for number, name in enumerate(["apple", "river", "stone", "cloud"] * 5)]
    results: dict[str, tuple[str, str, str | None]] = {}

    def ask(word: str) -> None:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=300)
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Repeat this word: {word}"}],
                max_tokens=8,
                temperature=0,
                stream=True,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        results[word] = (chunks[0].id, text, chunks[-1].choices[0].finish_reason)

    threads = [threading.Thread(target=ask, args=(word,)) for word in words]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(results) == sorted(words), f"answered {len(results)} of 20 in {time.monotonic() - started:.0f}s"
    charged = 0
    for word, (job_id, text, finish) in results.items():
        job = gateway.job(job_id, key)
        assert job["input"]["messages"][0]["content"] == f"Repeat this word: {word}"
        assert text == job["output"] and text.strip() and finish in ("stop", "length")
        charged += job["charge"]
    assert len({job_id for job_id, _, _ in results.values()}) == 20
    assert gateway.deposit(deposit_id, key)["charged"] == charged


@pytest.mark.process
def test_a_provider_killed_after_the_first_token_ends_the_stream_and_nothing_is_charged(gateway: Gateway) -> None:
    # Last in this module: it leaves the devnet with one provider.
    key, deposit_id = gateway.new_key(user="unlucky-user", amount=1_000_000)
    body = {"model": MODEL, "prompt": "Count from 1 to 1000, one number per line:", "options": {"num_predict": 400}}
    with (
        httpx.Client(timeout=120) as http,
        http.stream(
            "POST", f"{gateway.url}/api/generate", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as answer,
    ):
        assert answer.status_code == 200
        job_id = answer.headers["X-AITBC-Job"]
        lines = answer.iter_lines()
        first = json.loads(next(lines))
        assert first["response"] and not first["done"]
        victim = gateway.job(job_id, key)["provider"]
        [pid] = [p["pid"] for p in gateway.network["providers"] if p["address"] == victim]
        os.kill(pid, signal.SIGKILL)
        rest = [json.loads(line) for line in lines]
    assert "error" in rest[-1] and "nothing is charged" in rest[-1]["error"]
    assert not any(line.get("done") for line in rest)
    job = wait_until(
        lambda: (j := gateway.job(job_id, key))["state"] in ("refunded", "settled") and j, timeout=60, message="ended"
    )
    assert job["state"] == "refunded" and job["charge"] is None
    books = gateway.deposit(deposit_id, key)
    assert (books["charged"], books["reserved"], books["available"]) == (0, 0, 1_000_000)
