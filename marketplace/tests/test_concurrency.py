"""50 jobs at once against 3 providers of concurrency 2, with two coordinator workers racing.

Every part runs in its own thread with its own database connection: the clients
(50 submissions at once), two workers each running the outbox, dispatch and sweep, a
block producer, three scripted providers, and a monitor sampling the jobs in flight.
Timeouts here are failure guards only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.db.models import Count, F
from django.test import Client

from chain.protocol.market import job_charge
from marketplace.models import Job, JobAttempt, Offer, OutboxTx
from marketplace.services import dispatch, outbox, sweep
from marketplace.tests.support import CHAIN_ID, Payer, ScriptedProvider, named_key

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = 50
GUARD_S = 180


def in_thread(function):
    """Run ``function`` with this thread's own connection, closed when it ends."""

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return run


def test_fifty_jobs_three_providers_each_completed_once_and_paid_what_was_metered(market) -> None:
    providers = []
    for index in range(3):
        scripted = ScriptedProvider(
            Client(), named_key(f"provider/c{index}"), f"c{index}", market.coordinator.address, concurrency=2
        )
        scripted.input_price = 100 * (index + 1)
        scripted.register()
        providers.append(scripted)
    from marketplace.services.providers import provider_connected

    for scripted in providers:
        provider_connected(address=scripted.address)

    payers = [Payer(named_key(name), market.ledger, CHAIN_ID) for name in ("alice", "bob")]
    timeout_blocks = market.required_blocks() + 50
    locks = [
        payers[i % 2].lock(amount=20_000, arbiter=market.coordinator.address, timeout_blocks=timeout_blocks)
        for i in range(JOBS)
    ]
    stop = threading.Event()
    errors: list[BaseException] = []
    max_in_flight: Counter[str] = Counter()
    metered: dict[str, int] = {}
    metered_lock = threading.Lock()

    def guarded(loop):
        @in_thread
        def run():
            try:
                while not stop.is_set():
                    loop()
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)
                stop.set()

        return run

    def worker() -> None:
        outbox.outbox_process(client=market.ledger)
        dispatch.dispatch_pending()
        sweep.sweep()
        time.sleep(0.01)

    def producer() -> None:
        market.ledger.produce()
        time.sleep(0.05)

    def monitor() -> None:
        rows = Job.objects.filter(state__in=Job.IN_FLIGHT).values("provider_id").annotate(n=Count("id"))
        for row in rows:
            max_in_flight[row["provider_id"]] = max(max_in_flight[row["provider_id"]], row["n"])
        assert not Offer.objects.filter(active__gt=F("concurrency")).exists()
        time.sleep(0.005)

    def provider_loop(scripted: ScriptedProvider):
        def step() -> None:
            for job in scripted.assigned():
                scripted.handled.add(job["id"])
                assert scripted.accept(job["id"]).status_code == 200
                tokens = 5 + len(job["id"]) % 7
                response = scripted.result(job, output=f"done {job['id']}", input_tokens=12, output_tokens=tokens)
                assert response.status_code == 200, response.content
                with metered_lock:
                    assert job["id"] not in metered
                    metered[job["id"]] = job_charge(
                        input_tokens=12,
                        output_tokens=tokens,
                        input_price=scripted.input_price,
                        output_price=scripted.output_price,
                    )
            time.sleep(0.01)

        return step

    loops = [worker, worker, producer, monitor, *(provider_loop(p) for p in providers)]
    threads = [threading.Thread(target=guarded(loop), daemon=True) for loop in loops]
    for thread in threads:
        thread.start()

    @in_thread
    def submit(lock) -> str:
        response = market.submit(max_price=20_000, payment={"escrow_tx": lock}, http=Client())
        assert response.status_code == 202, response.content
        return response.json()["id"]

    try:
        with ThreadPoolExecutor(max_workers=JOBS) as pool:
            ids = list(pool.map(submit, locks))
        deadline = time.monotonic() + GUARD_S
        while not errors and Job.objects.filter(pk__in=ids, state=Job.SETTLED).count() < JOBS:
            assert time.monotonic() < deadline, Counter(Job.objects.values_list("state", flat=True))
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if errors:
        raise errors[0]

    assert len(set(ids)) == JOBS and sorted(metered) == sorted(ids)
    # Each job completed exactly once, and was paid exactly once.
    assert JobAttempt.objects.filter(state=JobAttempt.COMPLETED).count() == JOBS
    pays = OutboxTx.objects.filter(purpose=OutboxTx.JOB_PAY)
    assert pays.count() == JOBS and set(pays.values_list("status", flat=True)) == {OutboxTx.COMMITTED}
    assert max(max_in_flight.values()) <= 2 and set(max_in_flight) <= {p.address for p in providers}
    jobs = {job.id: job for job in Job.objects.filter(pk__in=ids)}
    assert {job_id: job.charge for job_id, job in jobs.items()} == metered
    # What the chain moved: providers got exactly the metered prices, escrows agree.
    earned = sum(market.ledger.balance(p.address) for p in providers)
    assert earned == sum(metered.values())
    for job in jobs.values():
        escrow = market.ledger.escrow(job.escrow_id)
        assert escrow["paid"] == job.charge and escrow["status"] == "closed"
        assert job.refund == 20_000 - job.charge
