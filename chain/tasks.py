from __future__ import annotations

from celery import shared_task

BEAT_SCHEDULE = {"chain consensus tick": ("chain.consensus_tick", 1)}


@shared_task(name="chain.consensus_tick", ignore_result=True)
def consensus_tick() -> None:
    """Beat's safety net for consensus: retransmit, announce the height, sync if behind.

    Idempotent: it only queues a tick for this process's consensus thread (a no-op
    where no node runs), so a late or doubled tick does no harm.
    """
    from chain.network import driver

    current = driver()
    if current is not None:
        current.tick()
