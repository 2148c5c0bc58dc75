from __future__ import annotations

from celery import shared_task

BEAT_SCHEDULE = {
    "chain consensus tick": ("chain.consensus_tick", 1),
    "chain watch head": ("chain.watch_head", 1),
}
# Entries a node process disables in its own database: the head watcher serves web processes,
# which learn of blocks from a node, while a node announces the blocks it applies itself.
NODE_DISABLED = {"chain watch head"}


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


@shared_task(name="chain.watch_head", ignore_result=True)
def watch_head() -> None:
    """Tell the dashboard's websockets about new blocks of the node this web process uses.

    A no-op in a node process, which announces the blocks it applies itself. Idempotent:
    each height is announced once, whoever runs the task (``chain.headwatch``).
    """
    from chain.network import driver

    if driver() is not None:
        return
    from chain.headwatch import watch_once

    watch_once()
